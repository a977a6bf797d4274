"""The FastAPI application of serve.py (requirements-serve.txt), over a DetectionService:

    POST /detect   an image (multipart field 'image', or the raw body) -> JSON detections, or with
                   annotated=true the image with its boxes drawn, as JPEG
    GET  /         the page: pick or drop an image, see its boxes, a table of them and the timing
    GET  /health   {"status": "ok", "queued": n, "in_flight": n}; 503 once shutting down or stopped
    GET  /model    class names, input size, runtime, precision, weights name, batching and limits
    GET  /metrics  Prometheus text: requests and errors by status, latency and batch-size histograms

Every refusal is JSON {"detail": one sentence} with its status: 400 (a Host this service does not answer
to), 408 (a body too slow to arrive), 413 (too large), 415 (not an image this service reads), 422 (a
corrupt image, a missing field, a bad query value), 503 (at its limit of images in flight, with
Retry-After, or shutting down). A 500 means the model failed: nothing a client sends causes one.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Sequence

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from utils import __version__
from utils.nms import MAX_CANDIDATES
from utils.serve.batching import ServiceStopped
from utils.serve.metrics import Metrics
from utils.serve.service import DetectionService, Overloaded
from utils.serve.uploads import RequestError, discard_body, image_bytes, read_body

LOGGER = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "page"
PAGE_FILES = {"index.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}
# Nothing but this server: the page needs no CDN, and neither a box label nor an injected attribute can
# run a script or style (no 'unsafe-inline'); no other site may frame it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# Every other answer: never framed (clickjacking), never sniffed into another type.
ANSWER_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
RETRY_AFTER_S = 1  # what a 503 from admission control tells the client to wait
MAX_QUERY_DIGITS = 6  # a class index has at most this many digits
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


def create_app(service: DetectionService, allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The application; starting it (its lifespan) warms the model up and starts the batcher. It answers
    requests whose Host header names this machine's loopback (127.0.0.1, localhost, ::1) or one of
    ``allowed_hosts`` ("*": any), so a web page whose name is rebound to 127.0.0.1 cannot drive it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="RepYOLO detection service", version=__version__, lifespan=lifespan)
    app.state.service = service
    app.state.page = {name: (PAGE / name).read_bytes() for name in PAGE_FILES}
    app.add_middleware(HostCheckMiddleware, allowed=[*LOOPBACK_NAMES, *allowed_hosts])
    app.add_middleware(HeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # the last added is the outermost
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/page.js", page_file, methods=["GET"], include_in_schema=False)
    app.add_api_route("/page.css", page_file, methods=["GET"], include_in_schema=False)
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


class HeadersMiddleware:
    """ANSWER_HEADERS on every answer that does not set them itself (the page sets its own policy)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name.encode(), value.encode()) for name, value in ANSWER_HEADERS.items()
                            if name.encode() not in present]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheckMiddleware:
    """Answers 400 to a request whose Host header names none of ``allowed`` ("*" among them: any host).

    A page on another site cannot read this service's answers (no CORS), unless its own name resolves to
    this machine: DNS rebinding. Its requests then carry its own name in Host, which is refused here.
    """

    def __init__(self, app, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {host_name(name) for name in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        host = host_name(header)
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        listed = ", ".join(sorted(self.allowed))
        sentence = (
            f"the Host header {header[:100]!r} names none of the hosts this service answers to ({listed}); "
            f"use one of those, or start serve.py with --allowed-hosts {host[:100] or 'NAME'}."
        )
        await JSONResponse({"detail": sentence}, status_code=400)(scope, receive, send)


def host_name(header: str) -> str:
    """The host of a Host header, lower case, without its port: 'LocalHost:8000' -> 'localhost',
    '[::1]:8000' -> '::1', '::1' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def request_error(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's list of validation errors as one sentence about the first."""
    first = error.errors()[0]
    where, name = first["loc"][0], first["loc"][-1]
    message = first["msg"][:1].lower() + first["msg"][1:]
    given = f" {shortened(first['input'])!r}" if first.get("input") is not None else ""
    return JSONResponse(
        {"detail": f"the {where} parameter {name}{given} is not valid: {message.rstrip('.')}."},
        status_code=422,
    )


def shortened(value: object, length: int = 40) -> object:
    """A client's value as an answer quotes it: strings past ``length`` characters cut, with '...'."""
    if isinstance(value, str) and len(value) > length:
        return value[:length] + "..."
    return value


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(
        request.app.state.page["index.html"], headers={"Content-Security-Policy": PAGE_POLICY}
    )


async def page_file(request: Request) -> Response:
    name = request.url.path.rsplit("/", 1)[-1]
    return Response(request.app.state.page[name], media_type=PAGE_FILES[name])


async def health(request: Request) -> JSONResponse:
    answer, status = request.app.state.service.health()
    return JSONResponse(answer, status_code=status)


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
    settings = service.settings
    thresholds = service.thresholds(conf, iou, parse_classes(classes), max_det)
    try:
        service.check_admission()  # before the body is read: a refusal costs no memory
    except (Overloaded, ServiceStopped) as error:
        if request.headers.get("expect", "").lower() != "100-continue":  # else it was never sent
            await discard_body(request.stream(), settings.max_upload_bytes, settings.body_timeout_s)
        return unavailable(error)
    body = await read_body(
        request.stream(),
        request.headers.get("content-length"),
        settings.max_upload_bytes,
        settings.body_timeout_s,
    )
    data = await image_bytes(request.headers, body)
    del body  # the image's bytes alone are kept
    try:
        result = await service.detect(data, thresholds, annotated)
    except (Overloaded, ServiceStopped) as error:
        return unavailable(error)
    except RequestError:
        raise
    except Exception as error:  # the model failed: answer, log, keep serving
        LOGGER.exception("detection failed")
        sentence = (
            f"the detector failed on this image ({type(error).__name__}: {error}); see the server's log."
        )
        return JSONResponse({"detail": sentence}, status_code=500)
    if annotated:
        headers = {"X-Detections": str(len(result.detections))}
        return Response(result.jpeg, media_type="image/jpeg", headers=headers)
    return JSONResponse(result.to_json(service.detector.names))


def unavailable(error: Exception) -> JSONResponse:
    """503 for a request the service cannot take now; Retry-After when it is only full."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(error, Overloaded) else None
    return JSONResponse({"detail": str(error)}, status_code=503, headers=headers)


def parse_classes(values: list[str] | None) -> list[int] | None:
    """The class indices of a query's classes=0,2 (or classes=0&classes=2); RequestError 422 for others."""
    if not values:
        return None
    indices = []
    for part in ",".join(values).split(","):
        digits = part.strip()
        if not (digits.isascii() and digits.isdigit() and len(digits) <= MAX_QUERY_DIGITS):
            raise RequestError(
                422,
                f"the query parameter classes holds {shortened(part)!r}; pass class indices such as "
                "classes=0,2.",
            )
        indices.append(int(digits))
    return indices
