"""yolov5's --image-weights: training images drawn, with replacement, by the weights of the classes they
hold, so that images of rare classes, and of classes the model still detects badly, come up more often.

A class's weight is its inverse frequency among the training labels (``class_weights``), multiplied after
each validation by (1 - the class's mAP50-95)^2; an image's weight is the sum of its labels' class
weights (``image_weights``), so an image without labels is never drawn, as in yolov5.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


def class_weights(labels: list[np.ndarray], nc: int) -> np.ndarray:
    """(nc,) the inverse of each class's label count, normalized to sum 1; a class without labels counts
    as one label. labels: per image, (n, 5) rows of class, x, y, w, h."""
    classes = np.concatenate([lb[:, 0] for lb in labels]).astype(np.int64) if labels else np.zeros(0, int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1
    weights = 1 / counts
    return weights / weights.sum()


def image_weights(labels: list[np.ndarray], weights_of_classes: np.ndarray) -> np.ndarray:
    """(N,) per image, the sum of its labels' class weights (an image with two labels of class c adds
    weights_of_classes[c] twice; an image without labels weighs 0)."""
    nc = len(weights_of_classes)
    counts = np.zeros((len(labels), nc))  # (N, nc) labels of each class per image
    for i, lb in enumerate(labels):
        counts[i] = np.bincount(lb[:, 0].astype(np.int64), minlength=nc)
    return counts @ weights_of_classes


class ImageWeightSampler(Sampler[int]):
    """Each pass (epoch) draws ``num_samples`` image indices with replacement, image i with probability
    proportional to its weight. The weights start from the inverse class frequencies; ``update`` rescales
    them by the per-class mAP of a validation. The draws come from a generator seeded with ``seed``."""

    def __init__(self, labels: list[np.ndarray], nc: int, num_samples: int, seed: int = 0):
        self.labels, self.num_samples = labels, num_samples
        self.class_weights = class_weights(labels, nc)
        self.weights = image_weights(labels, self.class_weights)
        self.rng = np.random.default_rng(seed)

    def update(self, class_maps: np.ndarray) -> None:
        """Weigh each class by its inverse frequency x (1 - its mAP50-95)^2, as yolov5 does after each
        validation. class_maps: (nc,) per class (see EvaluationResult.class_maps). Should every class score
        1, no image would weigh anything, and the previous weights are kept."""
        weights = image_weights(self.labels, self.class_weights * (1 - np.asarray(class_maps)) ** 2)
        if weights.sum() > 0:
            self.weights = weights

    def __iter__(self):
        probabilities = self.weights / self.weights.sum()
        drawn = self.rng.choice(len(self.weights), size=self.num_samples, p=probabilities)
        return iter(drawn.tolist())

    def __len__(self) -> int:
        return self.num_samples
