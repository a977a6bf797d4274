"""Detect: per-level 1x1 prediction convs and the YOLOv5 (v6) box decoding. No loss, no NMS."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from models.blocks.base import BuildContext

DEFAULT_ANCHORS = [
    [10, 13, 16, 30, 33, 23],  # P3/8
    [30, 61, 62, 45, 59, 119],  # P4/16
    [116, 90, 156, 198, 373, 326],  # P5/32
]


class Detect(nn.Module):
    """Anchor-based detection head over nl feature levels with na anchors each.

    Buffers: `anchors` Tensor[nl, na, 2] (w, h) in input pixels (saved in the state dict; AutoAnchor
    overwrites it in place) and `stride` Tensor[nl] (set by Model, not saved).
    Train mode returns nl raw tensors (B, na, H_l, W_l, 5 + nc); eval mode returns the decoded
    Tensor[B, N, 5 + nc]: cx, cy, w, h in input pixels, sigmoid objectness, sigmoid class scores.
    YAML args: [nc, anchors] (the names resolve to the top-level keys).
    """

    def __init__(self, nc: int, anchors: list[list[float]], in_channels: list[int]) -> None:
        super().__init__()
        if len(anchors) != len(in_channels):
            raise ValueError(f"Detect has {len(in_channels)} inputs but {len(anchors)} anchor levels")
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.level_convs = nn.ModuleList(
            nn.Conv2d(channels, self.na * self.no, 1) for channels in in_channels
        )
        self._grids: list[Tensor] = [torch.empty(0)] * self.nl

    def forward(self, features: list[Tensor]) -> list[Tensor] | Tensor:
        outputs = []
        for conv, feature in zip(self.level_convs, features):
            raw = conv(feature)
            batch, _, height, width = raw.shape
            raw = raw.view(batch, self.na, self.no, height, width).permute(0, 1, 3, 4, 2).contiguous()
            outputs.append(raw)  # (B, na, H, W, 5 + nc)
        if self.training:
            return outputs
        return torch.cat([self._decode(level, raw) for level, raw in enumerate(outputs)], 1)

    def _decode(self, level: int, raw: Tensor) -> Tensor:
        batch, _, height, width, _ = raw.shape
        if raw.dtype in (torch.bfloat16, torch.float16):  # half-precision inference (--half)
            raw = raw.float()  # box centres in pixels need float32 (bfloat16 is off by 2 px at 640)
        grid = self._grid(level, height, width, raw)
        scores = raw.sigmoid()
        xy = (scores[..., 0:2] * 2 - 0.5 + grid) * self.stride[level]
        doubled = scores[..., 2:4] * 2
        # a product, not ** 2: LiteRT has no Pow op that its converter accepts
        wh = doubled * doubled * self.anchors[level].view(1, self.na, 1, 1, 2)
        decoded = torch.cat((xy, wh, scores[..., 4:]), -1)
        return decoded.view(batch, -1, self.no)  # (B, na*H*W, 5 + nc)

    def _grid(self, level: int, height: int, width: int, like: Tensor) -> Tensor:
        grid = self._grids[level]
        # Under ONNX/JIT tracing a cached grid would be baked in as a constant of one input size.
        stale = grid.shape[2:4] != (height, width) or grid.device != like.device or grid.dtype != like.dtype
        if stale or torch.jit.is_tracing():
            ys = torch.arange(height, device=like.device, dtype=like.dtype)
            xs = torch.arange(width, device=like.device, dtype=like.dtype)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((grid_x, grid_y), -1).view(1, 1, height, width, 2)
            self._grids[level] = grid
        return grid

    @torch.no_grad()
    def initialize_biases(self, class_frequency: Tensor | None = None) -> None:
        """YOLOv5 prior: about 8 objects per 640x640 image per level; class prior 0.6 / (nc - 0.99).

        Needs `stride` set. `class_frequency` Tensor[nc] (optional) replaces the uniform class prior.
        """
        for conv, stride in zip(self.level_convs, self.stride):
            bias = conv.bias.view(self.na, self.no)
            bias[:, 4] += torch.log(8 / (640 / stride) ** 2)  # tensor math: also works on the meta device
            if class_frequency is None:
                bias[:, 5:] += math.log(0.6 / (self.nc - 0.99))
            else:
                bias[:, 5:] += torch.log(class_frequency / class_frequency.sum()).to(bias)

    @classmethod
    def from_yaml(
        cls, in_channels: list[int], args: list[Any], repeats: int, context: BuildContext
    ) -> tuple[nn.Module, int]:
        if len(args) < 2:
            raise ValueError("Detect needs [nc, anchors] as its arguments")
        nc, anchors = args[0], args[1]
        if isinstance(anchors, int):
            raise ValueError(
                "Detect anchors must be pixel (w, h) pairs per level, e.g. [[10,13, 16,30, 33,23], ...]"
            )
        return cls(int(nc), anchors, in_channels), 0
