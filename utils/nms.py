"""Non-maximum suppression over the decoded head output.

The model in eval mode returns ``(B, N, 5 + nc)``: cx, cy, w, h in network-input pixels, objectness
and per-class scores (both after the sigmoid). NMS turns that into one ``(n, 6)`` tensor per image:
x1, y1, x2, y2 (input pixels), score = objectness * class score, class index. Callers map the boxes
back to the original image with ``utils.boxes.scale_boxes_to_original``.
"""

from __future__ import annotations

import torch
import torchvision

from utils.boxes import box_xywh_to_xyxy

MAX_CANDIDATES = 30000  # boxes handed to torchvision per image, highest score first


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
) -> list[torch.Tensor]:
    """Class-aware NMS per image.

    Args:
        prediction: Tensor[B, N, 5 + nc] (cx, cy, w, h, objectness, class scores...), pixels.
        conf_thres: keep candidates whose score (objectness * class score) is above this.
        iou_thres: boxes of the same class overlapping a kept box by more than this are removed.
        classes: keep only these class indices (None keeps all).
        agnostic: suppress across classes (one box per location whatever its class).
        multi_label: one candidate per (box, class) pair above conf_thres instead of the best class only.
        max_det: at most this many boxes per image, highest score first.

    Returns:
        list of B tensors, each Tensor[n, 6] (x1, y1, x2, y2, score, class), sorted by score, on
        the device of ``prediction``.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} and iou_thres={iou_thres} must both lie in [0, 1].")
    if prediction.dim() != 3 or prediction.shape[-1] < 6:
        raise ValueError(f"prediction must be (B, N, 5 + nc), got {tuple(prediction.shape)}.")
    class_filter = None
    if classes is not None:
        class_filter = torch.as_tensor(classes, device=prediction.device, dtype=torch.float32)
    return [
        _nms_one_image(image_pred, conf_thres, iou_thres, class_filter, agnostic, multi_label, max_det)
        for image_pred in prediction
    ]


def _nms_one_image(
    image_pred: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    class_filter: torch.Tensor | None,
    agnostic: bool,
    multi_label: bool,
    max_det: int,
) -> torch.Tensor:
    """image_pred: Tensor[N, 5 + nc] -> Tensor[n, 6] (x1, y1, x2, y2, score, class)."""
    image_pred = image_pred[image_pred[:, 4] > conf_thres]  # score <= objectness, so this is safe
    scores = image_pred[:, 5:] * image_pred[:, 4:5]  # (n, nc)
    boxes = box_xywh_to_xyxy(image_pred[:, :4])
    if multi_label:
        box_index, class_index = (scores > conf_thres).nonzero(as_tuple=True)
        detections = torch.cat(
            (boxes[box_index], scores[box_index, class_index, None], class_index[:, None].float()), 1
        )
    else:
        best_score, class_index = scores.max(1, keepdim=True)
        detections = torch.cat((boxes, best_score, class_index.float()), 1)
        detections = detections[best_score.view(-1) > conf_thres]
    if class_filter is not None:
        detections = detections[(detections[:, 5:6] == class_filter).any(1)]
    if not len(detections):
        return detections.new_zeros((0, 6))
    order = detections[:, 4].argsort(descending=True, stable=True)[:MAX_CANDIDATES]
    detections = detections[order]
    # Shift every class into its own coordinate range so one NMS call never suppresses across classes.
    # Boxes may reach past the image edges, so the shift is the full coordinate span, not the maximum.
    span = detections[:, :4].max() - detections[:, :4].min() + 1
    offsets = 0 if agnostic else detections[:, 5:6] * span
    keep = torchvision.ops.nms(detections[:, :4] + offsets, detections[:, 4], iou_thres)
    return detections[keep[:max_det]]
