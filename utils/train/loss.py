"""The YOLOv5 training objective: target assignment to anchors and cells, CIoU box loss,
BCE objectness with the IoU as target, BCE classification with label smoothing.

The loss reads the anchors from the Detect head on every call, so anchors rewritten by
AutoAnchor (or loaded from a checkpoint) are always the ones the targets are matched to.
Gains (hyp.box, hyp.obj, hyp.cls) are used as given: the caller scales them for the number
of levels, classes and image size (see utils.train.trainer.scale_loss_gains).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utils.boxes import bbox_ciou
from utils.hyp import Hyp

LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}  # objectness weight per level, P3 (many small cells) weighs most
LEVEL_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]


@dataclass
class LevelTargets:
    """Targets assigned to one detection level; n = number of (target, anchor, cell) assignments.

    image, anchor, cell_y, cell_x: Tensor[n] long indices into the (B, na, H, W) prediction grid.
    box: Tensor[n, 4] xywh in grid units, xy relative to the cell's top-left corner (-0.5..1.5).
    anchor_wh: Tensor[n, 2] the matched anchor in grid units. classes: Tensor[n] long.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    cell_y: torch.Tensor
    cell_x: torch.Tensor
    box: torch.Tensor
    anchor_wh: torch.Tensor
    classes: torch.Tensor


def smooth_bce_targets(epsilon: float = 0.0) -> tuple[float, float]:
    """Label smoothing for BCE: (positive target, negative target)."""
    return 1.0 - 0.5 * epsilon, 0.5 * epsilon


class FocalBCE(nn.Module):
    """BCE-with-logits scaled by (1 - p_t)^gamma and the alpha balance (Lin et al., 2017); mean-reduced."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=bce.pos_weight, reduction="none")
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.bce(logits, targets)
        prob = torch.sigmoid(logits)
        p_t = targets * prob + (1 - targets) * (1 - prob)
        alpha_t = targets * self.alpha + (1 - targets) * (1 - self.alpha)
        return (loss * alpha_t * (1.0 - p_t) ** self.gamma).mean()


def build_level_targets(
    targets: torch.Tensor, anchors_grid: torch.Tensor, grid_hw: tuple[int, int], anchor_t: float
) -> LevelTargets:
    """Match targets to the anchors of one level and to cells.

    targets: Tensor[M, 6] (image_index, class, cx, cy, w, h), xywh normalized to the batch image.
    anchors_grid: Tensor[na, 2] anchor (w, h) in grid units of this level. grid_hw: (H, W).

    A target is matched to every anchor whose width and height ratios r satisfy
    max(r, 1/r) < anchor_t. Each match is assigned to the cell holding the box centre and to
    the nearest horizontal and the nearest vertical neighbour cell (the neighbours whose centres
    are closest to the box centre), when inside the grid, since the decoded centre offset
    (2 * sigmoid - 0.5) reaches half a cell into them.
    """
    height, width = grid_hw
    device = targets.device
    scale = torch.tensor([width, height], device=device, dtype=targets.dtype)
    center = targets[:, 2:4] * scale  # (M, 2) grid units
    size = targets[:, 4:6] * scale  # (M, 2)

    ratio = size[:, None, :] / anchors_grid[None]  # (M, na, 2)
    worst = torch.max(ratio, 1.0 / ratio).amax(dim=2)  # (M, na)
    target_index, anchor_index = (worst < anchor_t).nonzero(as_tuple=True)
    center = center[target_index]  # (n0, 2) one row per (target, anchor) match
    limits = torch.tensor([width - 1, height - 1], device=device)
    cell = center.long().clamp(min=torch.zeros_like(limits), max=limits)  # (n0, 2) x, y
    fraction = center - cell
    step = torch.where(fraction < 0.5, -1, 1)  # towards the nearer neighbour, per axis
    neighbour_x = cell.clone()
    neighbour_x[:, 0] += step[:, 0]
    neighbour_y = cell.clone()
    neighbour_y[:, 1] += step[:, 1]
    inside_x = (neighbour_x[:, 0] >= 0) & (neighbour_x[:, 0] <= width - 1)
    inside_y = (neighbour_y[:, 1] >= 0) & (neighbour_y[:, 1] <= height - 1)

    keep = torch.cat([torch.ones_like(inside_x), inside_x, inside_y])  # (3 * n0,)
    cells = torch.cat([cell, neighbour_x, neighbour_y])[keep]  # (n, 2)
    rows = target_index.repeat(3)[keep]
    anchors = anchor_index.repeat(3)[keep]
    picked = targets[rows]  # (n, 6)
    box = torch.cat([center.repeat(3, 1)[keep] - cells, size[rows]], dim=1)  # (n, 4)
    return LevelTargets(
        image=picked[:, 0].long(),
        anchor=anchors,
        cell_y=cells[:, 1],
        cell_x=cells[:, 0],
        box=box,
        anchor_wh=anchors_grid[anchors],
        classes=picked[:, 1].long(),
    )


class YoloLoss:
    """Callable loss: loss(predictions, targets) -> (total * batch_size, Tensor[3] (box, obj, cls) detached).

    predictions: list of nl raw tensors (B, na, H_l, W_l, 5 + nc), as the model returns in train mode.
    targets: Tensor[M, 6] (image_index, class, cx, cy, w, h) normalized.
    """

    def __init__(self, detect: nn.Module, hyp: Hyp):
        self.detect = detect
        self.hyp = hyp
        self.nc = int(detect.nc)
        self.nl = int(detect.nl)
        self.balance = LEVEL_BALANCE.get(self.nl, LEVEL_BALANCE_DEFAULT[: self.nl])
        self.positive, self.negative = smooth_bce_targets(hyp.label_smoothing)
        self._devices: dict = {}

    def _criteria(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        if device not in self._devices:
            cls_loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp.cls_pw], device=device))
            obj_loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp.obj_pw], device=device))
            if self.hyp.fl_gamma > 0:
                cls_loss, obj_loss = (
                    FocalBCE(cls_loss, self.hyp.fl_gamma),
                    FocalBCE(obj_loss, self.hyp.fl_gamma),
                )
            self._devices[device] = (cls_loss, obj_loss)
        return self._devices[device]

    def anchors_grid(self) -> torch.Tensor:
        """Tensor[nl, na, 2] anchors in grid units of each level."""
        stride = self.detect.stride.to(self.detect.anchors.device).view(-1, 1, 1)
        return self.detect.anchors / stride

    def build_targets(self, predictions: list[torch.Tensor], targets: torch.Tensor) -> list[LevelTargets]:
        anchors = self.anchors_grid().to(targets.device, targets.dtype)
        return [
            build_level_targets(targets, anchors[level], tuple(p.shape[2:4]), self.hyp.anchor_t)
            for level, p in enumerate(predictions)
        ]

    def __call__(
        self, predictions: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = predictions[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        cls_criterion, obj_criterion = self._criteria(device)
        box_loss = torch.zeros(1, device=device)
        obj_loss = torch.zeros(1, device=device)
        cls_loss = torch.zeros(1, device=device)
        for level, (raw, assigned) in enumerate(zip(predictions, self.build_targets(predictions, targets))):
            raw = raw.float()  # (B, na, H, W, 5 + nc); the loss is computed in float32 under AMP
            obj_target = torch.zeros(raw.shape[:4], device=device)
            if assigned.image.numel():
                picked = raw[assigned.image, assigned.anchor, assigned.cell_y, assigned.cell_x]  # (n, 5 + nc)
                xy = picked[:, 0:2].sigmoid() * 2 - 0.5
                wh = (picked[:, 2:4].sigmoid() * 2) ** 2 * assigned.anchor_wh
                ciou = bbox_ciou(torch.cat([xy, wh], dim=1), assigned.box)  # (n,)
                box_loss += (1.0 - ciou).mean()
                obj_target[assigned.image, assigned.anchor, assigned.cell_y, assigned.cell_x] = (
                    ciou.detach().clamp(0)
                )
                if self.nc > 1:  # a single class needs no classification term
                    cls_target = torch.full_like(picked[:, 5:], self.negative)
                    cls_target[torch.arange(len(picked), device=device), assigned.classes] = self.positive
                    cls_loss += cls_criterion(picked[:, 5:], cls_target)
            obj_loss += obj_criterion(raw[..., 4], obj_target) * self.balance[level]
        box_loss *= self.hyp.box
        obj_loss *= self.hyp.obj
        cls_loss *= self.hyp.cls
        batch_size = predictions[0].shape[0]
        return (box_loss + obj_loss + cls_loss) * batch_size, torch.cat(
            [box_loss, obj_loss, cls_loss]
        ).detach()
