"""The detection service: a Detector behind a DynamicBatcher, with the limits on what a request may send.

``DetectionService.detect(data, thresholds)`` decodes and letterboxes one uploaded image in a thread of its
own, queues it for the batcher, and returns its detections in the image's own pixels: exactly what
``Detector`` returns for that image with those settings, whichever images it shared a forward pass with
(images of one letterboxed shape run as one batch, see ``Detector.run_prepared``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.deploy.detections import annotate
from utils.deploy.detector import Detector, Prepared
from utils.errors import ConfigError
from utils.evaluation.plots import color_hex
from utils.serve.batching import DynamicBatcher
from utils.serve.metrics import Metrics
from utils.serve.uploads import RequestError, decode_image

JPEG_QUALITY = 90  # of the annotated images


@dataclass
class ServiceSettings:
    """Batching and limits. max_batch: images per forward pass at most (1: no batching); max_wait_ms: how
    long the first image of a batch waits for others; max_upload_mb: the largest request body;
    max_megapixels: the largest image, judged from its header before it is decoded."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_upload_mb: float = 16.0
    max_megapixels: float = 40.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.max_upload_mb <= 0 or self.max_megapixels <= 0:
            raise ConfigError(
                f"the service needs max_batch >= 1 (got {self.max_batch}), max_wait_ms >= 0 (got "
                f"{self.max_wait_ms}) and positive upload and pixel limits (got {self.max_upload_mb} MB, "
                f"{self.max_megapixels} megapixels); pass values in those ranges."
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)


@dataclass
class _Job:
    prepared: Prepared
    thresholds: dict  # Detector.thresholds()


@dataclass
class _Answer:
    detections: torch.Tensor  # (n, 6) x1, y1, x2, y2 (original pixels), score, class
    batch_size: int
    started: float  # time.perf_counter() when its batch started
    seconds: np.ndarray  # the batch's (stacking, inference, NMS) seconds


@dataclass
class DetectResult:
    """One request's answer. image: the decoded BGR image; detections: Tensor[n, 6] x1, y1, x2, y2
    (original pixels), confidence, class; ms: milliseconds per stage (inference and nms are those of the
    whole batch the image ran in); batch_size: images in that batch."""

    image: np.ndarray
    detections: torch.Tensor
    ms: dict[str, float]
    batch_size: int

    def to_json(self, names: list[str]) -> dict:
        height, width = self.image.shape[:2]
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
    ``start()`` and ``stop()`` on the event loop that calls ``detect``."""

    def __init__(
        self, detector: Detector, weights: str | Path, settings: ServiceSettings | None = None
    ) -> None:
        self.detector, self.weights = detector, Path(weights)
        self.settings = settings or ServiceSettings()
        self.img_hw = detector.input_hw()
        self.metrics = Metrics()
        self.batcher = DynamicBatcher(
            self._run_batch,
            self.settings.max_batch,
            self.settings.max_wait_ms / 1000,
            self.metrics.observe_batch,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.detector.warmup)
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def thresholds(
        self, conf: float | None, iou: float | None, classes: list[int] | None, max_det: int | None
    ) -> dict:
        """A request's NMS settings, the service's defaults for those not given; RequestError (422) for a
        class index the model does not predict."""
        try:
            return self.detector.thresholds(conf, iou, classes, max_det)
        except ConfigError as error:
            raise RequestError(422, str(error)) from None

    async def detect(self, data: bytes, thresholds: dict) -> DetectResult:
        """Detect in one uploaded image (its file's bytes). Raises RequestError for a body that is too
        large in pixels, not an image, or corrupt."""
        start = time.perf_counter()
        image, prepared, decoded = await asyncio.to_thread(self._decode_and_prepare, data)
        prepared_at = time.perf_counter()
        answer = await self.batcher.submit(_Job(prepared, thresholds))
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
        return DetectResult(image, answer.detections, ms, answer.batch_size)

    def _decode_and_prepare(self, data: bytes) -> tuple[np.ndarray, Prepared, float]:
        image = decode_image(data, self.settings.max_pixels)
        decoded = time.perf_counter()
        return image, self.detector.prepare(image, self.img_hw), decoded

    def _run_batch(self, jobs: list[_Job]) -> list[_Answer]:
        """In the batcher's worker thread: one forward pass per letterboxed shape, NMS per image."""
        started = time.perf_counter()
        detections, seconds = self.detector.run_prepared(
            [job.prepared for job in jobs], [job.thresholds for job in jobs]
        )
        return [_Answer(found, len(jobs), started, seconds) for found in detections]

    def annotated_jpeg(self, result: DetectResult) -> bytes:
        """The image with its detections drawn as detect.py draws them, as JPEG."""
        drawn = annotate(result.image, result.detections, self.detector.names)
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
            "limits": {
                "max_upload_mb": self.settings.max_upload_mb,
                "max_megapixels": self.settings.max_megapixels,
            },
        }

    def health(self) -> dict:
        return {"status": "ok" if self.batcher.running else "stopped", "queued": self.batcher.queued}
