"""The HTTP detection service behind serve.py: a Detector answering over HTTP, with requests that arrive
together gathered into one batch.

batching (the dynamic batcher), uploads (reading and checking what a request sends), metrics (Prometheus
text) and service (the detection service itself) need only the standard library and the detector; app
(the FastAPI routes) and server (uvicorn on a socket) need requirements-serve.txt and are imported only
when serving. page/ holds the browser page, served as it is.
"""
