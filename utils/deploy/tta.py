"""Test-time augmentation as yolov5's ``--augment`` does it: each batch is also run at 0.83x mirrored left
to right and at 0.67x, the three predictions are mapped back to the full-size input and merged before NMS.
The largest objects of the full-size pass and the smallest of the 0.67x pass are dropped first (the
coarsest output level of the one, the finest of the other), where each pass sees them worst.

``AugmentedInference`` wraps any ``InferenceModel`` (PyTorch or an exported runtime: a smaller input to a
fixed-size graph is padded at the bottom and right, which moves no box), so val.py, detect.py and
``Detector`` use it alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.inference import LETTERBOX_GRAY, WrappedInference

SCALES = (1.0, 0.83, 0.67)  # yolov5's
FLIPS = (False, True, False)  # a left-right mirror per scale
FINEST_STRIDE = 8  # P3/8: the first output level of every model here


def scaled_size(hw: tuple[int, int], ratio: float) -> tuple[int, int]:
    """(height, width) of an image of ``hw`` resized by ``ratio``, before its padding."""
    return (max(int(hw[0] * ratio), 1), max(int(hw[1] * ratio), 1)) if ratio != 1.0 else tuple(hw)


def scale_batch(images: torch.Tensor, ratio: float, stride: int) -> torch.Tensor:
    """images (B, 3, H, W) resized by ``ratio`` and padded at the bottom and right with letterbox gray up to
    a multiple of ``stride``."""
    if ratio == 1.0:
        return images
    size = scaled_size(images.shape[-2:], ratio)
    resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    padded = (math.ceil(size[0] / stride) * stride, math.ceil(size[1] / stride) * stride)
    return F.pad(resized, (0, padded[1] - size[1], 0, padded[0] - size[0]), value=LETTERBOX_GRAY)


def level_cells(hw: tuple[int, int], stride: int) -> list[int]:
    """Grid cells per output level, finest first, for an input of ``hw`` and a largest stride ``stride``."""
    strides = [FINEST_STRIDE * 2**level for level in range(int(math.log2(stride // FINEST_STRIDE)) + 1)]
    return [math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]


class AugmentedInference(WrappedInference):
    """``model`` run on each batch at SCALES with FLIPS; returns the merged predictions (B, N', 5 + nc) in
    the full-size input's pixels, as ``model`` returns its own."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        outputs = []
        for ratio, flip in zip(SCALES, FLIPS):
            scaled = scale_batch(images.flip(-1) if flip else images, ratio, self.stride)
            prediction = self.model(scaled).clone()  # (B, N, 5 + nc) cx, cy, w, h in the scaled input
            size = scaled_size((height, width), ratio)
            prediction[..., [0, 2]] *= width / size[1]
            prediction[..., [1, 3]] *= height / size[0]
            if flip:
                prediction[..., 0] = width - prediction[..., 0]
            outputs.append((prediction, tuple(self.fixed_input_hw or scaled.shape[-2:])))
        return torch.cat(self._without_edge_levels(outputs), 1)

    def _without_edge_levels(self, outputs: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[torch.Tensor]:
        """Drop the coarsest level's predictions of the full-size pass and the finest level's of the
        smallest pass (yolov5's rule), when the outputs are laid out level by level as our heads lay them."""
        kept = [prediction for prediction, _ in outputs]
        for position, level in ((0, -1), (-1, 0)):
            prediction, hw = outputs[position]
            cells = level_cells(hw, self.stride)
            anchors, remainder = divmod(prediction.shape[1], sum(cells))
            if remainder or not anchors:
                return [prediction for prediction, _ in outputs]  # not a layout we know: keep everything
            count = anchors * cells[level]
            kept[position] = prediction[:, :-count] if level == -1 else prediction[:, count:]
        return kept

    def warmup(self, img_hw: tuple[int, int] = (640, 640)) -> None:
        self.model.warmup(img_hw)
