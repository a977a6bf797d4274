"""Serve a detector over HTTP: a JSON API, annotated images, and a page to try it in a browser.

    python serve.py --weights runs/train/exp/weights/best_fused.pt      # http://127.0.0.1:8000
    curl -F image=@data/images/shapes0.jpg http://127.0.0.1:8000/detect
    curl --data-binary @data/images/shapes0.jpg "http://127.0.0.1:8000/detect?annotated=true" -o drawn.jpg

Weights are any file val.py takes (a .pt checkpoint in either form, or any export of convert.py, INT8
included). Requests that arrive together are run as one batch (--max-batch, --max-wait-ms). The service
listens on 127.0.0.1 only unless --host says otherwise; it has no authentication, so to expose it put it
behind a proxy that has. Needs `pip install -r requirements-serve.txt` (FastAPI, uvicorn).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.cli import build_parser, choice_flags, device_option, half_option, option, script_main
from utils.deploy.detector import Detector
from utils.deploy.formats import loadable, runtime_flags
from utils.errors import ConfigError
from utils.serve.service import DetectionService, ServiceSettings

LOGGER = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    """What serve.py's flags set (utils.cli.option)."""

    weights: str | Path = option(
        "", f"a .pt checkpoint (ours, either form, or yolov5's) or an export of convert.py: {loadable()}",
        required=True,
    )  # fmt: skip
    host: str = option(
        "127.0.0.1", "address to listen on: 127.0.0.1 answers this machine only; 0.0.0.0 answers every "
        "network this machine is on, and the service has no authentication",
    )  # fmt: skip
    port: int = option(8000, "port to listen on")
    max_batch: int = option(16, "images per forward pass at most (1: no batching)")
    max_wait_ms: float = option(5.0, "how long the first image of a batch waits for others")
    max_upload_mb: float = option(16.0, "largest request body in MB (larger: 413)")
    max_megapixels: float = option(
        40.0, "largest image in megapixels, read from its header before decoding (larger: 413)"
    )
    max_queue: int | None = option(
        None, "images in flight at most, from decoding to answer (more: 503 with Retry-After); default "
        "2 x --max-batch: one batch running, one gathered and waiting", type=int,
    )  # fmt: skip
    max_connections: int = option(512, "open connections at most (more: 503)")
    body_timeout: float = option(30.0, "seconds a request body may take to arrive (longer: 408)")
    graceful_timeout: float = option(
        10.0, "seconds Ctrl-C / SIGTERM waits for requests in flight; those left are answered 503"
    )
    conf_floor: float = option(0.001, "lowest conf a request may ask for (lower: 422)")
    max_det_cap: int = option(1000, "highest max_det a request may ask for (higher: 422)")
    allowed_hosts: list[str] = option(
        [], "Host names answered besides 127.0.0.1, localhost, ::1 and --host ('*': any), e.g. the "
        "name a proxy forwards", nargs="+",
    )  # fmt: skip
    img_size: int | list[int] | None = option(
        None, "h [w] (default: the size the model was trained or exported at, else 640)",
        "--img", "--img-size", "--imgsz", nargs="+", type=int,
    )  # fmt: skip
    conf_thres: float = option(
        0.25, "default score threshold (a request may pass conf=)", "--conf", "--conf-thres"
    )
    iou_thres: float = option(
        0.45, "default NMS IoU threshold (a request may pass iou=)", "--iou", "--iou-thres"
    )
    max_det: int = option(1000, "default boxes per image at most (a request may pass max_det=)")
    device: str = device_option(help="cpu or a CUDA index such as 0 (default: cuda if present)")
    half: bool = half_option()
    runtime: str | None = choice_flags(runtime_flags())  # a runtime of another format (utils.deploy.formats)
    access_log: bool = option(False, "log every request")

    def detector(self) -> Detector:
        """A Detector with these weights, device, precision and default settings."""
        detector = Detector(self.weights, self.device, half=self.half, runtime=self.runtime)
        detector.size = self.img_size
        detector.conf, detector.iou, detector.max_det = self.conf_thres, self.iou_thres, self.max_det
        return detector

    def settings(self) -> ServiceSettings:
        return ServiceSettings(
            self.max_batch,
            self.max_wait_ms,
            self.max_upload_mb,
            self.max_megapixels,
            self.max_queue or 2 * self.max_batch,
            self.max_connections,
            self.body_timeout,
            self.graceful_timeout,
            self.conf_floor,
            self.max_det_cap,
        )


def parse_args(argv: list[str] | None = None) -> ServeOptions:
    parser = build_parser(ServeOptions, __doc__)
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error("--img takes one size or two (height width)")
    if not (0 <= args.conf_thres <= 1 and 0 <= args.iou_thres <= 1):
        parser.error("--conf and --iou are fractions between 0 and 1")
    if not 0 <= args.port <= 65535:
        parser.error("--port is a TCP port, 0 to 65535")
    return ServeOptions(**vars(args))


def run(weights: str | Path | ServeOptions, **values) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM). ``weights`` and the other ServeOptions fields as
    ``values``, or a whole ServeOptions."""
    options = weights if isinstance(weights, ServeOptions) else ServeOptions(weights, **values)
    try:
        from utils.serve.app import create_app
        from utils.serve.server import bind, server_for
    except ImportError as error:
        raise ConfigError(
            f"serving needs FastAPI and uvicorn, and {error.name} is not installed; "
            "pip install -r requirements-serve.txt."
        ) from None
    settings = options.settings()  # bad limits fail before the model loads
    service = DetectionService(options.detector(), options.weights, settings)
    service_app = create_app(service, [options.host, *options.allowed_hosts])
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    if options.host not in LOOPBACK_HOSTS:
        LOGGER.warning(
            "WARNING: listening on %s: whoever can reach it can use the service, which has no "
            "authentication; put it behind a proxy that has.",
            options.host,
        )
    shown = f"[{host}]" if ":" in host else host
    LOGGER.info("serving %s on http://%s:%d (the page at /, the API at /detect, its docs at /docs)",
                Path(options.weights).name, shown, port)  # fmt: skip
    try:
        server_for(service_app, options.access_log).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down gracefully, then re-raised Ctrl-C
        LOGGER.info("stopped")


def main(argv: list[str] | None = None) -> None:
    status, _ = script_main("serve.py", run, parse_args(argv))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
