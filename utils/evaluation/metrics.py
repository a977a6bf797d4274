"""Detection metrics that follow the COCO protocol (pycocotools' COCOeval, bbox, area 'all').

Protocol, per image and class: detections sorted by score (stable, descending) and cut to
``max_det``; each detection in turn takes the not-yet-matched ground truth with the highest IoU,
provided IoU >= t (ties go to the later ground truth, as in COCOeval), for t in 0.50:0.05:0.95.
Per class across images: detections sorted by score, cumulative precision made monotone from the
right, sampled at 101 recall points (searchsorted 'left', zero past the highest recall), AP = mean
of the samples. Classes without ground truth are left out of every mean.

Box format everywhere here: xyxy pixels of the original image. Detections are ``(n, 6)``
(x1, y1, x2, y2, score, class); labels are ``(m, 5)`` (class, x1, y1, x2, y2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.boxes import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1, endpoint=True)
CONF_GRID = np.linspace(0.0, 1.0, 1000)  # confidences at which the P, R and F1 curves are sampled


def _as_numpy(array: torch.Tensor | np.ndarray, columns: int) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64).reshape(-1, columns)


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes, float64. boxes1: (N, 4), boxes2: (M, 4) -> (N, M)."""
    if not len(boxes1) or not len(boxes2):
        return np.zeros((len(boxes1), len(boxes2)))
    return box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()


def match_detections(ious: np.ndarray, iou_thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """COCO greedy matching of one image and class.

    Args:
        ious: (D, G) IoU of detections (already sorted by descending score) with ground truths.
        iou_thresholds: (T,) thresholds.

    Returns:
        (D, T) bool, True where the detection is a true positive at that threshold.
    """
    num_dets, num_gts = ious.shape
    num_thresholds = len(iou_thresholds)
    true_positive = np.zeros((num_dets, num_thresholds), dtype=bool)
    if num_dets == 0 or num_gts == 0:
        return true_positive
    thresholds = np.minimum(iou_thresholds, 1 - 1e-10)  # COCOeval caps the threshold the same way
    gt_taken = np.zeros((num_thresholds, num_gts), dtype=bool)
    rows = np.arange(num_thresholds)
    for det in np.nonzero(ious.max(1) >= thresholds.min())[0]:  # the others miss at every threshold
        available = np.where(gt_taken, -1.0, ious[det])  # (T, G)
        best_gt = num_gts - 1 - available[:, ::-1].argmax(1)  # the last GT among equal IoUs wins
        hit = available[rows, best_gt] >= thresholds
        gt_taken[rows[hit], best_gt[hit]] = True
        true_positive[det] = hit
    return true_positive


@dataclass
class DetectionMetrics:
    """Results of ``DetectionEvaluator.compute``; per-class arrays have nc rows."""

    ap: np.ndarray  # (nc, T) AP per class and IoU threshold, NaN for classes without ground truth
    instances: np.ndarray  # (nc,) ground-truth boxes per class
    images_with_class: np.ndarray  # (nc,) images holding at least one box of the class
    precision: np.ndarray  # (nc,) at the confidence with the best mean F1 (IoU 0.5)
    recall: np.ndarray  # (nc,) at that confidence
    best_conf: float
    pr_curve: np.ndarray  # (nc, 101) interpolated precision at RECALL_THRESHOLDS, IoU 0.5
    p_curve: np.ndarray  # (nc, 1000) precision vs CONF_GRID, IoU 0.5
    r_curve: np.ndarray  # (nc, 1000)
    f1_curve: np.ndarray  # (nc, 1000)
    images: int

    @property
    def has_gt(self) -> np.ndarray:
        return self.instances > 0

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0]

    @property
    def ap50_95(self) -> np.ndarray:
        return self.ap.mean(1)

    def _mean(self, values: np.ndarray) -> float:
        return float(values[self.has_gt].mean()) if self.has_gt.any() else 0.0

    @property
    def map50(self) -> float:
        return self._mean(self.ap50)

    @property
    def map50_95(self) -> float:
        return self._mean(self.ap50_95)

    @property
    def mean_precision(self) -> float:
        return self._mean(self.precision)

    @property
    def mean_recall(self) -> float:
        return self._mean(self.recall)

    @property
    def fitness(self) -> float:
        return fitness(self.map50, self.map50_95)


def fitness(map50: float, map50_95: float) -> float:
    """The single number that ranks checkpoints: 0.1 * mAP50 + 0.9 * mAP50-95."""
    return 0.1 * map50 + 0.9 * map50_95


class DetectionEvaluator:
    """Accumulates per-image matches, then computes COCO AP and the P/R/F1 curves.

    max_det caps detections per image and class, as COCOeval's maxDets does with categories on.
    """

    def __init__(self, nc: int, max_det: int = 100, iou_thresholds: np.ndarray = IOU_THRESHOLDS):
        self.nc = nc
        self.max_det = max_det
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
        self.instances = np.zeros(nc, dtype=np.int64)
        self.images_with_class = np.zeros(nc, dtype=np.int64)
        self.images = 0
        self._image_keys: list[tuple[bool, int | str]] = []
        self._record_image: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._true_positive: list[np.ndarray] = []

    def add_image(
        self,
        detections: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        image_id: int | str | None = None,
    ) -> None:
        """detections: (n, 6) x1, y1, x2, y2, score, class; labels: (m, 5) class, x1, y1, x2, y2.

        image_id only breaks ties between equal scores of different images, in COCOeval's order
        (ascending image id); by default images rank in the order they are added.
        """
        detections = _as_numpy(detections, 6)
        labels = _as_numpy(labels, 5)
        key = self.images if image_id is None else image_id
        self._image_keys.append((isinstance(key, str), key))
        self.images += 1
        gt_classes = labels[:, 0].astype(np.int64)
        if len(gt_classes) and (gt_classes.min() < 0 or gt_classes.max() >= self.nc):
            raise ValueError(
                f"label class {gt_classes.max()} is outside 0..{self.nc - 1}; check the dataset nc."
            )
        self.instances += np.bincount(gt_classes, minlength=self.nc)
        self.images_with_class[np.unique(gt_classes)] += 1
        det_classes = detections[:, 5].astype(np.int64)
        for cls in np.unique(det_classes):
            if not 0 <= cls < self.nc:
                continue  # like COCOeval, categories outside the ground-truth set are not scored
            dets = detections[det_classes == cls]
            dets = dets[np.argsort(-dets[:, 4], kind="stable")[: self.max_det]]
            ious = pairwise_iou(dets[:, :4], labels[gt_classes == cls, 1:])
            self._record_image.append(np.full(len(dets), self.images - 1))
            self._scores.append(dets[:, 4])
            self._classes.append(np.full(len(dets), cls))
            self._true_positive.append(match_detections(ious, self.iou_thresholds))

    def compute(self) -> DetectionMetrics:
        num_thresholds = len(self.iou_thresholds)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        classes = np.concatenate(self._classes) if self._classes else np.zeros(0, dtype=np.int64)
        true_positive = (
            np.concatenate(self._true_positive)
            if self._true_positive
            else np.zeros((0, num_thresholds), bool)
        )
        record_image = np.concatenate(self._record_image) if self._record_image else np.zeros(0, np.int64)
        image_rank = np.empty(self.images, dtype=np.int64)
        image_rank[sorted(range(self.images), key=self._image_keys.__getitem__)] = np.arange(self.images)
        # by score, then (like COCOeval) by image id, then by rank within the image
        order = np.lexsort((np.arange(len(scores)), image_rank[record_image], -scores))
        scores, classes, true_positive = scores[order], classes[order], true_positive[order]

        ap = np.full((self.nc, num_thresholds), np.nan)
        pr_curve = np.zeros((self.nc, len(RECALL_THRESHOLDS)))
        p_curve = np.zeros((self.nc, len(CONF_GRID)))
        r_curve = np.zeros((self.nc, len(CONF_GRID)))
        for cls in np.nonzero(self.instances)[0]:
            selected = classes == cls
            class_tp = true_positive[selected]  # (n, T), by descending score
            tp_sum = np.cumsum(class_tp, 0, dtype=np.float64)
            fp_sum = np.cumsum(~class_tp, 0, dtype=np.float64)
            recall = tp_sum / self.instances[cls]
            precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
            interpolated = _interpolated_precision(recall, precision)  # (R, T)
            ap[cls] = interpolated.mean(0)
            pr_curve[cls] = interpolated[:, 0]
            p_curve[cls], r_curve[cls] = _curves_vs_confidence(
                scores[selected], precision[:, 0], recall[:, 0]
            )

        f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + 1e-16)
        has_gt = self.instances > 0
        best = int(f1_curve[has_gt].mean(0).argmax()) if has_gt.any() else 0
        return DetectionMetrics(
            ap=ap,
            instances=self.instances.copy(),
            images_with_class=self.images_with_class.copy(),
            precision=p_curve[:, best],
            recall=r_curve[:, best],
            best_conf=float(CONF_GRID[best]),
            pr_curve=pr_curve,
            p_curve=p_curve,
            r_curve=r_curve,
            f1_curve=f1_curve,
            images=self.images,
        )


def _interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(n, T) cumulative recall and precision -> (101, T) precision at RECALL_THRESHOLDS.

    The precision envelope is made non-increasing (max over all later points); a recall level
    beyond the highest one reached scores zero.
    """
    num_dets, num_thresholds = recall.shape
    out = np.zeros((len(RECALL_THRESHOLDS), num_thresholds))
    if num_dets == 0:
        return out
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, 0), 0), 0)
    for t in range(num_thresholds):
        index = np.searchsorted(recall[:, t], RECALL_THRESHOLDS, side="left")
        reached = index < num_dets
        out[reached, t] = envelope[index[reached], t]
    return out


def _curves_vs_confidence(
    scores: np.ndarray, precision: np.ndarray, recall: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall when keeping detections with score >= c, for c in CONF_GRID.

    scores (n,) descending with precision, recall (n,) cumulative -> two (1000,) arrays (0 where
    nothing is kept).
    """
    if not len(scores):
        return np.zeros(len(CONF_GRID)), np.zeros(len(CONF_GRID))
    kept = np.searchsorted(-scores, -CONF_GRID, side="right")  # detections with score >= c
    last = np.maximum(kept - 1, 0)
    return np.where(kept > 0, precision[last], 0.0), np.where(kept > 0, recall[last], 0.0)


class ConfusionMatrix:
    """Counts of (predicted class, true class) with a background row and column (index nc).

    Detections above ``conf_thres`` are paired one-to-one with labels of any class, highest IoU
    first, when IoU > ``iou_thres``. An unpaired label counts as (background, its class), an
    unpaired detection as (its class, background). ``matrix[predicted, true]``.
    """

    def __init__(self, nc: int, conf_thres: float = 0.25, iou_thres: float = 0.45):
        self.nc = nc
        self.conf_thres = conf_thres
        self.iou_thres = iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def update(self, detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """detections: (n, 6) x1, y1, x2, y2, score, class; labels: (m, 5) class, x1, y1, x2, y2."""
        detections = _as_numpy(detections, 6)
        labels = _as_numpy(labels, 5)
        detections = detections[detections[:, 4] > self.conf_thres]
        det_classes = detections[:, 5].astype(np.int64)
        gt_classes = labels[:, 0].astype(np.int64)
        ious = pairwise_iou(labels[:, 1:], detections[:, :4])  # (m, n)
        gt_index, det_index = np.nonzero(ious > self.iou_thres)
        order = np.argsort(-ious[gt_index, det_index], kind="stable")
        gt_free = np.ones(len(labels), dtype=bool)
        det_free = np.ones(len(detections), dtype=bool)
        for gt, det in zip(gt_index[order], det_index[order]):
            if gt_free[gt] and det_free[det]:
                gt_free[gt] = det_free[det] = False
                self.matrix[det_classes[det], gt_classes[gt]] += 1
        np.add.at(self.matrix, (self.nc, gt_classes[gt_free]), 1)
        np.add.at(self.matrix, (det_classes[det_free], self.nc), 1)

    def normalized(self) -> np.ndarray:
        """Each true-class column divided by its total (columns sum to 1; empty columns stay 0)."""
        totals = self.matrix.sum(0, keepdims=True)
        return self.matrix / np.maximum(totals, 1)
