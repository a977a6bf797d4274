"""AutoAnchor: check how well the model's anchors fit the dataset's boxes, evolve better ones if not.

Fit is measured as in YOLOv5: a box fits an anchor when both width and height ratios
min(r, 1/r) exceed 1 / anchor_t (the loss's matching rule); the best possible recall (BPR) is
the fraction of boxes that fit at least one anchor. New anchors come from k-means on the box
sizes (whitened by their standard deviation) followed by a genetic search on the fitness.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

LOGGER = logging.getLogger(__name__)
PREFIX = "AutoAnchor: "


def anchor_match_ratios(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """anchors: (k, 2) (w, h), wh: (n, 2) box sizes in the same unit -> (n, k) worst side ratio in (0, 1]."""
    ratio = wh[:, None, :] / anchors[None]  # (n, k, 2)
    return np.minimum(ratio, 1.0 / ratio).min(axis=2)


def anchor_metrics(anchors: np.ndarray, wh: np.ndarray, thr: float) -> tuple[float, float]:
    """(best possible recall, mean number of anchors above threshold per box); thr = 1 / anchor_t."""
    ratios = anchor_match_ratios(anchors, wh)
    bpr = float((ratios.max(axis=1) > thr).mean())
    anchors_above = float((ratios > thr).sum(axis=1).mean())
    return bpr, anchors_above


def anchor_fitness(anchors: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """Mean best ratio over boxes, counting only boxes that fit (what the genetic search maximizes)."""
    best = anchor_match_ratios(anchors, wh).max(axis=1)
    return float((best * (best > thr)).mean())


def dataset_box_sizes(labels: list[np.ndarray], shapes: np.ndarray, img_size: int) -> np.ndarray:
    """Box (w, h) in pixels at training size: labels (n, 5) cls,cx,cy,w,h normalized; shapes (N, 2) (w, h)."""
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    scaled = img_size * shapes / shapes.max(axis=1, keepdims=True)  # letterboxed (w, h) per image
    sizes = [np.asarray(lab, dtype=np.float64)[:, 3:5] * s for s, lab in zip(scaled, labels) if len(lab)]
    return np.concatenate(sizes, axis=0) if sizes else np.zeros((0, 2))


def kmeans(points: np.ndarray, k: int, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding. points: (n, d) -> centroids (k, d)."""
    rng = np.random.default_rng(seed)
    centroids = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        distance = ((points[:, None] - np.array(centroids)[None]) ** 2).sum(-1).min(1)
        probability = distance / distance.sum() if distance.sum() > 0 else None
        centroids.append(points[rng.choice(len(points), p=probability)])
    centroids = np.array(centroids, dtype=np.float64)
    for _ in range(iterations):
        assignment = ((points[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        updated = np.array(
            [points[assignment == j].mean(0) if (assignment == j).any() else centroids[j] for j in range(k)]
        )
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


def evolve_anchors(
    wh: np.ndarray, n: int = 9, thr: float = 0.25, generations: int = 1000, seed: int = 0
) -> np.ndarray:
    """Anchors (n, 2) sorted by area for box sizes wh (m, 2): k-means, then mutate-and-keep-if-better."""
    rng = np.random.default_rng(seed)
    wh = wh[(wh >= 2.0).all(axis=1)] if (wh >= 2.0).all(axis=1).sum() >= n else wh
    if len(wh) < n:  # too few boxes to cluster: take what there is, repeated
        wh = np.resize(wh, (n, 2))
    std = wh.std(axis=0)
    std[std == 0] = 1.0
    anchors = kmeans(wh / std, n, seed=seed) * std
    anchors = np.maximum(anchors, 2.0)
    best = anchor_fitness(anchors, wh, thr)
    for _ in range(generations):
        gain = np.ones_like(anchors)
        while (gain == 1).all():  # mutate a random subset of coordinates, never none
            mask = rng.random(anchors.shape) < 0.9
            gain = np.where(
                mask, (rng.standard_normal(anchors.shape) * rng.random() * 0.1 + 1).clip(0.3, 3.0), 1
            )
        candidate = np.maximum(anchors * gain, 2.0)
        fitness = anchor_fitness(candidate, wh, thr)
        if fitness > best:
            best, anchors = fitness, candidate
    return anchors[np.argsort(anchors.prod(axis=1))]


def check_anchors(
    detect: nn.Module,
    labels: list[np.ndarray],
    shapes: np.ndarray,
    img_size: int,
    anchor_t: float = 4.0,
    generations: int = 1000,
    seed: int = 0,
) -> bool:
    """Check the Detect head's anchors on the training labels; replace them when BPR < 0.98 and the
    evolved anchors have a higher BPR. Returns True when the anchors were replaced.

    The box sizes are jittered by a random scale in [0.9, 1.1] per image, as the training
    augmentation would, so the check is not fooled by exact fits.
    """
    thr = 1.0 / anchor_t
    wh = dataset_box_sizes(labels, shapes, img_size)
    if not len(wh):
        LOGGER.info(f"{PREFIX}no labelled boxes in the training set, keeping the model's anchors.")
        return False
    rng = np.random.default_rng(seed)
    wh = wh * rng.uniform(0.9, 1.1, size=(len(wh), 1))
    current = detect.anchors.detach().cpu().numpy().reshape(-1, 2).astype(np.float64)
    bpr, above = anchor_metrics(current, wh, thr)
    message = f"{PREFIX}{above:.2f} anchors/target, best possible recall (BPR) {bpr:.4f}"
    if bpr >= 0.98:
        LOGGER.info(f"{message}, current anchors fit the dataset well.")
        return False
    LOGGER.info(f"{message}, below 0.98: evolving anchors for this dataset ({len(wh)} boxes)...")
    evolved = evolve_anchors(wh, n=len(current), thr=thr, generations=generations, seed=seed)
    new_bpr, new_above = anchor_metrics(evolved, wh, thr)
    shown = ", ".join(f"{w:.0f},{h:.0f}" for w, h in evolved)
    if new_bpr <= bpr:
        LOGGER.info(
            f"{PREFIX}evolved anchors (BPR {new_bpr:.4f}) are not better, keeping the original anchors."
        )
        return False
    with torch.no_grad():
        detect.anchors[:] = torch.tensor(
            evolved, dtype=detect.anchors.dtype, device=detect.anchors.device
        ).view_as(detect.anchors)
    LOGGER.info(f"{PREFIX}new anchors (pixels) {shown}: BPR {new_bpr:.4f}, {new_above:.2f} anchors/target.")
    return True
