"""The FastAPI application of serve.py (requirements-serve.txt), over a DetectionService:

    POST /detect   an image (multipart field 'image', or the raw body) -> JSON detections, or with
                   annotated=true the image with its boxes drawn, as JPEG
    GET  /         the page: pick or drop an image, see its boxes, a table of them and the timing
    GET  /health   {"status": "ok", "queued": n}
    GET  /model    class names, input size, runtime, precision, weights name, batching and limits
    GET  /metrics  Prometheus text: requests and errors by status, latency and batch-size histograms

Every refusal is JSON {"detail": one sentence} with its status: 413 (too large), 415 (not an image this
service reads), 422 (a corrupt image, a missing field, a bad query value), 503 (shutting down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from utils import __version__
from utils.nms import MAX_CANDIDATES
from utils.serve.batching import ServiceStopped
from utils.serve.metrics import Metrics
from utils.serve.service import DetectionService
from utils.serve.uploads import RequestError, image_bytes, read_body

LOGGER = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "page"
# Nothing but this server: the page needs no CDN, and a box label cannot smuggle in a script.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
DETECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "application/octet-stream": _BINARY,
        },
    }
}


def create_app(service: DetectionService) -> FastAPI:
    """The application; starting it (its lifespan) warms the model up and starts the batcher."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="RepYOLO detection service", version=__version__, lifespan=lifespan)
    app.state.service = service
    app.state.page = {name: (PAGE / name).read_bytes() for name in ("index.html", "page.js")}
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/page.js", page_script, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/model", model, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"], response_class=PlainTextResponse)
    app.add_api_route("/detect", detect, methods=["POST"], openapi_extra=DETECT_BODY)
    return app


class MetricsMiddleware:
    """Counts every HTTP answer by route and status and times it (plain ASGI: nothing is buffered)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an answer never started is the server's error

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router; unknown paths share one label
            path = route.path if route is not None else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - start)


async def request_error(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's list of validation errors as one sentence about the first."""
    first = error.errors()[0]
    where, name = first["loc"][0], first["loc"][-1]
    message = first["msg"][:1].lower() + first["msg"][1:]
    given = f" {first['input']!r}" if first.get("input") is not None else ""
    return JSONResponse(
        {"detail": f"the {where} parameter {name}{given} is not valid: {message.rstrip('.')}."},
        status_code=422,
    )


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(
        request.app.state.page["index.html"], headers={"Content-Security-Policy": PAGE_POLICY}
    )


async def page_script(request: Request) -> Response:
    return Response(request.app.state.page["page.js"], media_type="text/javascript")


async def health(request: Request) -> dict:
    return request.app.state.service.health()


async def model(request: Request) -> dict:
    return request.app.state.service.model_info()


async def metrics(request: Request) -> PlainTextResponse:
    text = request.app.state.service.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def detect(
    request: Request,
    conf: float | None = Query(None, ge=0, le=1, description="score threshold (default: the server's)"),
    iou: float | None = Query(None, ge=0, le=1, description="NMS IoU threshold (default: the server's)"),
    classes: list[str] | None = Query(None, description="class indices to keep: classes=0,2 or repeated"),
    max_det: int | None = Query(None, ge=1, le=MAX_CANDIDATES, description="boxes per image at most"),
    annotated: bool = Query(False, description="answer with the image and its boxes drawn, as JPEG"),
) -> Response:
    """Detect objects in one image: JSON {"image": {"width", "height"}, "detections": [{"xyxy": [x1, y1, x2,
    y2] (the image's pixels), "confidence", "class", "name"}], "ms": {stage: milliseconds}, "batch": images
    in its forward pass}, or the annotated JPEG."""
    service: DetectionService = request.app.state.service
    thresholds = service.thresholds(conf, iou, parse_classes(classes), max_det)
    body = await read_body(
        request.stream(), request.headers.get("content-length"), service.settings.max_upload_bytes
    )
    data = await image_bytes(request.headers, body)
    try:
        result = await service.detect(data, thresholds)
    except ServiceStopped as error:
        return JSONResponse({"detail": str(error)}, status_code=503)
    except RequestError:
        raise
    except Exception as error:  # the model failed: answer, log, keep serving
        LOGGER.exception("detection failed")
        sentence = (
            f"the detector failed on this image ({type(error).__name__}: {error}); see the server's log."
        )
        return JSONResponse({"detail": sentence}, status_code=500)
    if annotated:
        jpeg = await asyncio.to_thread(service.annotated_jpeg, result)  # drawing and encoding: off the loop
        return Response(jpeg, media_type="image/jpeg", headers={"X-Detections": str(len(result.detections))})
    return JSONResponse(result.to_json(service.detector.names))


def parse_classes(values: list[str] | None) -> list[int] | None:
    """The class indices of a query's classes=0,2 (or classes=0&classes=2); RequestError 422 for others."""
    if not values:
        return None
    indices = []
    for part in ",".join(values).split(","):
        if not part.strip().isdigit():
            raise RequestError(
                422, f"the query parameter classes holds {part!r}; pass class indices such as classes=0,2."
            )
        indices.append(int(part))
    return indices
