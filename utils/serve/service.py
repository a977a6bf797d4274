"""The detection service: a Detector behind a DynamicBatcher, with the limits on what a request may send.

``DetectionService.detect(data, thresholds)`` decodes and letterboxes one uploaded image in a thread of its
own, queues it for the batcher, and returns its detections in the image's own pixels: exactly what
``Detector`` returns for that image with those settings, whichever images it shared a forward pass with
(images of one letterboxed shape run as one batch, see ``Detector.run_prepared``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.data.image_inputs import Prepared
from utils.deploy.detections import annotate
from utils.deploy.detector import Detector
from utils.errors import ConfigError
from utils.evaluation.plots import color_hex
from utils.nms import MAX_CANDIDATES
from utils.serve.batching import SHUTTING_DOWN, DynamicBatcher, ServiceStopped
from utils.serve.metrics import Metrics
from utils.serve.uploads import MAX_SIDE, RequestError, decode_image

LOGGER = logging.getLogger(__name__)
JPEG_QUALITY = 90  # of the annotated images


@dataclass
class ServiceSettings:
    """Batching and limits.

    max_batch: images per forward pass at most (1: no batching); max_wait_ms: how long the first image of
    a batch waits for others; max_upload_mb: the largest request body; max_megapixels: the largest image,
    judged from its header before it is decoded; max_queue: images admitted at once (being decoded,
    waiting for the model or in its forward pass), past which a request is answered 503 at once;
    max_connections: open connections at most (past it uvicorn answers 503); body_timeout_s: how long a
    request body may take to arrive (past it: 408); graceful_timeout_s: how long shutdown waits for the
    requests in flight (those left then are answered 503); conf_floor and max_det_cap: the lowest conf and
    the highest max_det a request may ask for, which bound the work of its NMS.
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_upload_mb: float = 16.0
    max_megapixels: float = 40.0
    max_queue: int = 32
    max_connections: int = 512
    body_timeout_s: float = 30.0
    graceful_timeout_s: float = 10.0
    conf_floor: float = 0.001
    max_det_cap: int = 1000

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.max_upload_mb <= 0 or self.max_megapixels <= 0:
            raise ConfigError(
                f"the service needs max_batch >= 1 (got {self.max_batch}), max_wait_ms >= 0 (got "
                f"{self.max_wait_ms}) and positive upload and pixel limits (got {self.max_upload_mb} MB, "
                f"{self.max_megapixels} megapixels); pass values in those ranges."
            )
        if self.max_queue < self.max_batch or self.max_connections < 1:
            raise ConfigError(
                f"max_queue ({self.max_queue}) must hold at least one full batch (max_batch "
                f"{self.max_batch}) and max_connections ({self.max_connections}) must be at least 1; "
                "raise them."
            )
        if not (self.body_timeout_s > 0 and self.graceful_timeout_s >= 0):
            raise ConfigError(
                f"body_timeout_s ({self.body_timeout_s}) must be positive and graceful_timeout_s "
                f"({self.graceful_timeout_s}) at least 0; pass seconds in those ranges."
            )
        if not (0 <= self.conf_floor <= 1 and 1 <= self.max_det_cap <= MAX_CANDIDATES):
            raise ConfigError(
                f"conf_floor ({self.conf_floor}) must be 0 to 1 and max_det_cap ({self.max_det_cap}) 1 to "
                f"{MAX_CANDIDATES}; pass values in those ranges."
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def limits(self) -> dict:
        """The limits as /model names them."""
        return {
            "max_upload_mb": self.max_upload_mb,
            "max_megapixels": self.max_megapixels,
            "max_side": MAX_SIDE,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
            "body_timeout_s": self.body_timeout_s,
            "graceful_timeout_s": self.graceful_timeout_s,
            "conf_floor": self.conf_floor,
            "max_det_cap": self.max_det_cap,
        }


class Overloaded(RuntimeError):
    """``max_queue`` images are admitted already: the request is answered 503 with Retry-After."""


@dataclass
class _Job:
    prepared: Prepared
    thresholds: dict  # Detector.thresholds()


@dataclass
class _Answer:
    detections: torch.Tensor  # (n, 6) x1, y1, x2, y2 (original pixels), score, class
    batch_size: int  # images in its forward pass
    started: float  # time.perf_counter() when its batch started
    seconds: np.ndarray  # the batch's (stacking, inference, NMS) seconds


@dataclass
class DetectResult:
    """One request's answer. image_hw: the decoded image's (height, width); detections: Tensor[n, 6] x1, y1,
    x2, y2 (original pixels), confidence, class; ms: milliseconds per stage (inference and nms are those of
    the whole batch the image ran in); batch_size: images in its forward pass; jpeg: the image with its
    boxes drawn, only when asked for (the decoded pixels themselves are not kept)."""

    image_hw: tuple[int, int]
    detections: torch.Tensor
    ms: dict[str, float]
    batch_size: int
    jpeg: bytes | None = None

    def to_json(self, names: list[str]) -> dict:
        height, width = self.image_hw
        detections = [
            {"xyxy": row[:4], "confidence": row[4], "class": int(row[5]), "name": names[int(row[5])]}
            for row in self.detections.tolist()
        ]
        return {
            "image": {"width": width, "height": height},
            "detections": detections,
            "ms": {stage: round(value, 3) for stage, value in self.ms.items()},
            "batch": self.batch_size,
        }


class DetectionService:
    """``detector`` served with ``settings``; ``weights`` names the file it was loaded from. Call
    ``start()`` and ``stop()`` on the event loop that calls ``detect``.

    At most ``max_queue`` images are admitted at once, from decoding to their answer; the images beyond
    are refused (``Overloaded``) before their pixels are decoded. Only the letterboxed image waits for the
    model, and the decoded one is let go as soon as its letterbox (and, when asked for, its drawing) is
    done, so the memory of the images in flight is at most ``max_queue`` decoded images.
    """

    def __init__(
        self, detector: Detector, weights: str | Path, settings: ServiceSettings | None = None
    ) -> None:
        self.detector, self.weights = detector, Path(weights)
        self.settings = settings or ServiceSettings()
        self.img_hw = detector.input_hw()
        try:  # the server's own defaults within its floor and cap
            self.thresholds(None, None, None, None)
        except RequestError as error:
            raise ConfigError(f"the service's default {error.message}") from None
        self.metrics = Metrics()
        self.batcher = DynamicBatcher(
            self._run_batch, self.settings.max_batch, self.settings.max_wait_ms / 1000
        )
        self.admitted = 0  # images being decoded, queued or run
        self.accepting = True  # False once shutdown has begun
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.detector.warmup)
        await self.batcher.start()

    async def stop(self) -> None:
        self.accepting = False
        await self.batcher.stop()

    def begin_shutdown(self) -> None:
        """On the event loop, when the server begins to shut down: no request is admitted from now on, and
        those still unanswered ``graceful_timeout_s`` later are answered ServiceStopped (503)."""
        self.accepting = False
        grace = self.settings.graceful_timeout_s
        asyncio.get_running_loop().call_later(grace, self.batcher.fail_unanswered)

    @property
    def full(self) -> bool:
        return self.admitted >= self.settings.max_queue

    def check_admission(self) -> None:
        """Raises ServiceStopped while shutting down and Overloaded while ``max_queue`` images are in."""
        if not self.accepting:
            raise ServiceStopped(SHUTTING_DOWN)
        if self.full:
            raise Overloaded(
                f"the service is at its limit of {self.settings.max_queue} images in flight; try again in a "
                "moment."
            )

    def thresholds(
        self, conf: float | None, iou: float | None, classes: list[int] | None, max_det: int | None
    ) -> dict:
        """A request's NMS settings, the service's defaults for those not given; RequestError (422) for a
        class index the model does not predict, a conf under the service's floor or a max_det over its
        cap (a low conf and a high max_det buy an NMS whose cost grows with the square of the boxes)."""
        try:
            thresholds = self.detector.thresholds(conf, iou, classes, max_det)
        except ConfigError as error:
            raise RequestError(422, str(error)) from None
        floor, cap = self.settings.conf_floor, self.settings.max_det_cap
        if thresholds["conf_thres"] < floor:
            given = thresholds["conf_thres"]
            raise RequestError(
                422,
                f"conf {given:g} is under this service's floor of {floor:g}; pass conf={floor:g} or more.",
            )
        if thresholds["max_det"] > cap:
            given = thresholds["max_det"]
            raise RequestError(
                422, f"max_det {given} is over this service's cap of {cap}; pass max_det={cap} or fewer."
            )
        return thresholds

    async def detect(self, data: bytes, thresholds: dict, annotated: bool = False) -> DetectResult:
        """Detect in one uploaded image (its file's bytes), with its boxes drawn as JPEG when ``annotated``.
        Raises RequestError for a body that is too large in pixels, not an image, or corrupt, Overloaded or
        ServiceStopped when it cannot be admitted."""
        self.check_admission()
        self.admitted += 1
        try:
            return await self._detect(data, thresholds, annotated)
        finally:
            self.admitted -= 1

    async def _detect(self, data: bytes, thresholds: dict, annotated: bool) -> DetectResult:
        start = time.perf_counter()
        image, prepared, decoded = await asyncio.to_thread(self._decode_and_prepare, data)
        image_hw = image.shape[:2]
        if not annotated:
            image = None  # the answer needs its shape, not its pixels
        prepared_at = time.perf_counter()
        answer = await self.batcher.submit(_Job(prepared, thresholds))
        del prepared
        _, inference, nms = answer.seconds
        stages = {
            "decode": decoded - start,
            "letterbox": prepared_at - decoded,
            "queue": max(answer.started - prepared_at, 0.0),
            "inference": inference,
            "nms": nms,
            "total": time.perf_counter() - start,
        }
        ms = {stage: seconds * 1000 for stage, seconds in stages.items()}
        jpeg = None
        if image is not None:  # drawing and encoding: off the event loop
            jpeg = await asyncio.to_thread(self.annotated_jpeg, image, answer.detections)
        return DetectResult(image_hw, answer.detections, ms, answer.batch_size, jpeg)

    def _decode_and_prepare(self, data: bytes) -> tuple[np.ndarray, Prepared, float]:
        image = decode_image(data, self.settings.max_pixels)
        decoded = time.perf_counter()
        try:
            prepared = self.detector.prepare(image, self.img_hw)
        except cv2.error:  # OpenCV's resize asserts on shapes it cannot take: the image's fault
            raise RequestError(
                422, f"the {image.shape[1]}x{image.shape[0]} image cannot be letterboxed; send another."
            ) from None
        return image, prepared, decoded

    def _run_batch(self, jobs: list[_Job]) -> list[_Answer | Exception]:
        """In the batcher's worker thread: one forward pass per letterboxed shape, NMS per image. When the
        batch fails, each image is run alone, so only the images that fail alone get the error."""
        try:
            return self._run(jobs)
        except Exception:
            if len(jobs) == 1:
                raise
            LOGGER.warning("a batch of %d images failed; running each alone", len(jobs), exc_info=True)
        answers: list[_Answer | Exception] = []
        for job in jobs:
            try:
                answers += self._run([job])
            except Exception as error:
                answers.append(error)
        return answers

    def _run(self, jobs: list[_Job]) -> list[_Answer]:
        started = time.perf_counter()
        prepared = [job.prepared for job in jobs]
        detections, seconds = self.detector.run_prepared(prepared, [job.thresholds for job in jobs])
        pass_size = {}
        for positions in self.detector.forward_passes(prepared):
            pass_size.update(dict.fromkeys(positions, len(positions)))
            self._loop.call_soon_threadsafe(self.metrics.observe_batch, len(positions))
        return [_Answer(found, pass_size[k], started, seconds) for k, found in enumerate(detections)]

    def annotated_jpeg(self, image: np.ndarray, detections: torch.Tensor) -> bytes:
        """The image with its detections drawn as detect.py draws them, as JPEG."""
        drawn = annotate(image, detections, self.detector.names)
        ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode the annotated image as JPEG.")
        return encoded.tobytes()

    def model_info(self) -> dict:
        model, detector = self.detector.model, self.detector
        return {
            "weights": self.weights.name,
            "runtime": model.kind,
            "precision": model.precision,
            "device": str(model.device),
            "input_size": list(self.img_hw),  # (height, width) images are letterboxed to
            "stride": model.stride,
            "names": list(detector.names),
            "colors": [color_hex(index) for index in range(len(detector.names))],
            "defaults": {"conf": detector.conf, "iou": detector.iou, "max_det": detector.max_det},
            "batching": {"max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms},
            "limits": self.settings.limits(),
        }

    def health(self) -> tuple[dict, int]:
        """(/health's answer, its HTTP status): 200 while serving, 503 once shutting down or if the model's
        worker has stopped."""
        if not self.batcher.running:
            status = "stopped"
        else:
            status = "ok" if self.accepting else "shutting down"
        answer = {"status": status, "queued": self.batcher.queued, "in_flight": self.admitted}
        return answer, 200 if status == "ok" else 503
