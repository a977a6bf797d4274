"""Box formats and geometry shared by data, loss, NMS, metrics and drawing.

Formats are named in every function: ``xyxy`` is (x1, y1, x2, y2) corners, ``xywh`` is
(center x, center y, width, height). Functions accept torch tensors or numpy arrays
of shape (..., 4) unless stated otherwise and return the same type.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torchvision

Boxes = Union[torch.Tensor, np.ndarray]


def _clone(boxes: Boxes) -> Boxes:
    return boxes.clone() if isinstance(boxes, torch.Tensor) else np.copy(boxes)


def box_xywh_to_xyxy(boxes: Boxes) -> Boxes:
    out = _clone(boxes)
    out[..., 0] = boxes[..., 0] - boxes[..., 2] / 2
    out[..., 1] = boxes[..., 1] - boxes[..., 3] / 2
    out[..., 2] = boxes[..., 0] + boxes[..., 2] / 2
    out[..., 3] = boxes[..., 1] + boxes[..., 3] / 2
    return out


def box_xyxy_to_xywh(boxes: Boxes) -> Boxes:
    out = _clone(boxes)
    out[..., 0] = (boxes[..., 0] + boxes[..., 2]) / 2
    out[..., 1] = (boxes[..., 1] + boxes[..., 3]) / 2
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def box_normxywh_to_xyxy(
    boxes: Boxes, width: float, height: float, pad_x: float = 0, pad_y: float = 0
) -> Boxes:
    """Normalized (cx, cy, w, h) in [0, 1] -> pixel xyxy, scaled by (width, height) and shifted by the pad."""
    out = box_xywh_to_xyxy(boxes)
    out[..., [0, 2]] = out[..., [0, 2]] * width + pad_x
    out[..., [1, 3]] = out[..., [1, 3]] * height + pad_y
    return out


def box_xyxy_to_normxywh(boxes: Boxes, width: float, height: float) -> Boxes:
    """Pixel xyxy -> normalized (cx, cy, w, h) relative to an image of (width, height)."""
    out = box_xyxy_to_xywh(boxes)
    out[..., [0, 2]] = out[..., [0, 2]] / width
    out[..., [1, 3]] = out[..., [1, 3]] / height
    return out


def clip_boxes(boxes: Boxes, height: float, width: float) -> Boxes:
    """Clip xyxy boxes to the image, in place, and return them."""
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, width)
        boxes[..., 1].clamp_(0, height)
        boxes[..., 2].clamp_(0, width)
        boxes[..., 3].clamp_(0, height)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, width)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, height)
    return boxes


def scale_boxes_to_original(
    boxes: Boxes,
    original_hw: tuple[int, int],
    ratio_pad: tuple[tuple[float, float], tuple[float, float]],
) -> Boxes:
    """Undo a letterbox: xyxy boxes in the letterboxed image -> xyxy in the original image, clipped.

    ratio_pad: ((ratio_h, ratio_w), (pad_x, pad_y)) as returned by the letterbox.
    """
    (ratio_h, ratio_w), (pad_x, pad_y) = ratio_pad
    boxes[..., [0, 2]] = (boxes[..., [0, 2]] - pad_x) / ratio_w
    boxes[..., [1, 3]] = (boxes[..., [1, 3]] - pad_y) / ratio_h
    return clip_boxes(boxes, original_hw[0], original_hw[1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU. boxes1: Tensor[N, 4] xyxy, boxes2: Tensor[M, 4] xyxy -> Tensor[N, M]."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def bbox_ciou(pred_xywh: torch.Tensor, target_xywh: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise Complete-IoU (Zheng et al., 2020) of matched boxes. Tensor[N, 4] xywh -> Tensor[N].

    CIoU = IoU - center_distance^2 / enclosing_diagonal^2 - alpha * v, where v measures the
    aspect-ratio mismatch and alpha = v / (1 - IoU + v) weighs it (alpha is not differentiated).
    """
    p = box_xywh_to_xyxy(pred_xywh)
    t = box_xywh_to_xyxy(target_xywh)
    inter_w = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp(0)
    inter_h = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp(0)
    inter = inter_w * inter_h
    pw, ph = pred_xywh[:, 2], pred_xywh[:, 3] + eps
    tw, th = target_xywh[:, 2], target_xywh[:, 3] + eps
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    enclose_w = torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])
    enclose_h = torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])
    diag2 = enclose_w**2 + enclose_h**2 + eps
    center2 = (pred_xywh[:, 0] - target_xywh[:, 0]) ** 2 + (pred_xywh[:, 1] - target_xywh[:, 1]) ** 2
    v = (4 / math.pi**2) * (torch.atan(tw / th) - torch.atan(pw / ph)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (center2 / diag2 + v * alpha)
