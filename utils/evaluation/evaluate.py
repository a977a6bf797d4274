"""``evaluate(predictor, loader, names)``: run a detector over a validation loader and measure it the COCO
way. The trainer calls it every epoch and val.py calls it from the command line; neither duplicates it.

A predictor is anything with the ``utils.inference.InferenceModel`` face: called on a float
(B, 3, H, W) RGB 0..1 tensor it returns decoded predictions (B, N, 5 + nc), and it has ``device``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import box_normxywh_to_xyxy, scale_boxes_to_original
from utils.coco import image_id_for
from utils.device import time_sync
from utils.evaluation.metrics import ConfusionMatrix, DetectionEvaluator, DetectionMetrics
from utils.evaluation.plots import plot_validation
from utils.nms import non_max_suppression
from utils.paths import write_text_atomic

LOGGER = logging.getLogger(__name__)
TABLE_HEADER = ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
# on_image(detections (n, 6) x1, y1, x2, y2, score, class in original pixels, image path, original (h, w))
ImageHook = Callable[[torch.Tensor, str, tuple], None]


@dataclass
class EvaluationResult:
    """Scores (None for a speed-only run), the confusion matrix and per-image stage timings."""

    names: list[str]
    metrics: DetectionMetrics | None
    confusion: ConfusionMatrix
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(3))  # preprocess, inference, NMS
    images: int = 0
    input_shape: tuple[int, ...] = (0, 3, 0, 0)  # the largest batch shape seen

    @property
    def map50(self) -> float:
        return float(self.metrics.map50) if self.metrics is not None else 0.0

    @property
    def map50_95(self) -> float:
        return float(self.metrics.map50_95) if self.metrics is not None else 0.0

    @property
    def precision(self) -> float:
        return float(self.metrics.mean_precision) if self.metrics is not None else 0.0

    @property
    def recall(self) -> float:
        return float(self.metrics.mean_recall) if self.metrics is not None else 0.0

    def class_maps(self) -> np.ndarray:
        """(nc,) mAP50-95 per class, a class without ground truth given the mean over the others (yolov5's
        ``maps``); zeros for a speed-only run."""
        if self.metrics is None:
            return np.zeros(len(self.names))
        return np.where(self.metrics.has_gt, self.metrics.ap50_95, self.metrics.map50_95)

    def speed_ms(self) -> dict[str, float]:
        values = self.seconds * 1e3 / max(self.images, 1)
        return dict(zip(("preprocess", "inference", "nms"), (float(v) for v in values)))

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json content (plain JSON types); the scores are None for a speed-only run."""
        metrics = self.metrics
        results: dict[str, Any] = {"mAP50": None, "mAP50_95": None, "precision": None, "recall": None,
                                   "fitness": None, "per_class": {}}  # fmt: skip
        if metrics is not None:
            results.update(
                mAP50=metrics.map50,
                mAP50_95=metrics.map50_95,
                precision=metrics.mean_precision,
                recall=metrics.mean_recall,
                fitness=metrics.fitness,
            )
            for c, name in enumerate(self.names):
                has_gt = bool(metrics.has_gt[c])
                results["per_class"][name] = {
                    "AP50": float(metrics.ap50[c]) if has_gt else None,
                    "AP50_95": float(metrics.ap50_95[c]) if has_gt else None,
                    "precision": float(metrics.precision[c]) if has_gt else None,
                    "recall": float(metrics.recall[c]) if has_gt else None,
                    "instances": int(metrics.instances[c]),
                    "images": int(metrics.images_with_class[c]),
                }
        results.update(speed_ms=self.speed_ms(), images=self.images, input_shape=list(self.input_shape))
        return results

    def table(self, verbose: bool = False) -> str:
        """yolov5's table: an 'all' row, then one row per class with labels when verbose."""
        metrics, names = self.metrics, self.names
        row = "%22s%11i%11i%11.3g%11.3g%11.3g%11.3g"
        lines = [("%22s" + "%11s" * 6) % TABLE_HEADER]
        all_row = (
            "all",
            metrics.images,
            metrics.instances.sum(),
            metrics.mean_precision,
            metrics.mean_recall,
        )
        lines.append(row % (*all_row, metrics.map50, metrics.map50_95))
        if metrics.instances.sum() == 0:
            lines.append("WARNING: no labels in this split, so there is nothing to measure mAP against.")
        if verbose and len(names) > 1:
            for c in np.nonzero(metrics.has_gt)[0]:
                class_row = (names[c], metrics.images_with_class[c], metrics.instances[c])
                scores = (metrics.precision[c], metrics.recall[c], metrics.ap50[c], metrics.ap50_95[c])
                lines.append(row % (*class_row, *scores))
        return "\n".join(lines)

    def speed_line(self) -> str:
        speed = self.speed_ms()
        return (
            f"Speed: {speed['preprocess']:.1f} ms pre-process, {speed['inference']:.1f} ms inference, "
            f"{speed['nms']:.1f} ms NMS per image at shape {tuple(self.input_shape)}"
        )

    def log(self, verbose: bool = False) -> None:
        if self.metrics is not None:
            LOGGER.info(self.table(verbose))
        LOGGER.info(self.speed_line())

    def save(self, save_dir: Path, plots: bool = True, content: dict | None = None) -> Path:
        """metrics.json (``content``, default ``to_dict()``) and, with plots, the PR/F1/P/R curves and the
        confusion matrix into save_dir (created if need be)."""
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if plots and self.metrics is not None:
            plot_validation(self.metrics, self.confusion, self.names, save_dir)
        return write_text_atomic(
            Path(save_dir) / "metrics.json",
            json.dumps(content if content is not None else self.to_dict(), indent=2),
        )


@dataclass(frozen=True)
class Thresholds:
    """NMS settings of a validation: yolov5's val.py defaults."""

    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300


def evaluate(
    predictor,
    loader,
    names: list[str],
    thresholds: Thresholds = Thresholds(),
    speed_only: bool = False,
    quiet: bool = False,
    on_image: ImageHook | None = None,
) -> EvaluationResult:
    """Predict on every batch of ``loader`` (items as utils.data.dataset.collate makes them), apply
    class-aware multi-label NMS (``thresholds``) and match the detections to the labels in original-image
    pixels.

    speed_only: time the stages and skip the matching (yolov5's speed task).
    on_image: called with each image's detections, e.g. to write YOLO txt or COCO JSON predictions.
    """
    nc = len(names)
    evaluator, confusion = DetectionEvaluator(nc), ConfusionMatrix(nc)
    result = EvaluationResult(list(names), None, confusion)
    description = ("%22s" + "%11s" * 6) % TABLE_HEADER
    for images, targets, paths, shapes in tqdm(loader, desc=description, disable=quiet, leave=False):
        start = time_sync()
        inputs = images.to(predictor.device, non_blocking=True).float() / 255  # (B, 3, H, W) 0..1
        loaded = time_sync()
        prediction = predictor(inputs)  # (B, N, 5 + nc)
        inferred = time_sync()
        conf, iou, max_det = thresholds.conf_thres, thresholds.iou_thres, thresholds.max_det
        detections = non_max_suppression(prediction, conf, iou, multi_label=True, max_det=max_det)
        result.seconds += (loaded - start, inferred - loaded, time_sync() - inferred)
        result.images += len(images)
        result.input_shape = max(result.input_shape, tuple(inputs.shape), key=lambda s: s[2] * s[3])
        if speed_only:
            continue
        height, width = inputs.shape[2:]
        for index, (det, path, (original_hw, ratio_pad)) in enumerate(zip(detections, paths, shapes)):
            labels = targets[targets[:, 0] == index, 1:].clone()  # (m, 5) class, cx, cy, w, h normalized
            label_boxes = box_normxywh_to_xyxy(labels[:, 1:], width, height)
            labels[:, 1:] = scale_boxes_to_original(label_boxes, original_hw, ratio_pad)
            det = det.detach().cpu().clone()  # (n, 6) xyxy, score, class
            scale_boxes_to_original(det[:, :4], original_hw, ratio_pad)
            evaluator.add_image(det, labels, image_id_for(path))
            confusion.update(det, labels)
            if on_image is not None:
                on_image(det, path, original_hw)
    if not speed_only:
        result.metrics = evaluator.compute()
    return result
