"""The plain YOLOv5 blocks: Conv, Bottleneck, C3, SPPF, Concat, Upsample (v6.0 and later), and Focus and
SPP, the stem and pooling of releases v4.0 and v5.0 (so that their checkpoints load)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks.base import Block, BuildContext
from models.reparam import conv_from_kernel, fuse_conv_bn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03
ACTIVATIONS = ("SiLU", "LeakyReLU", "ReLU", "Identity")


def make_activation(name: str | None) -> nn.Module:
    """'SiLU' (default), 'LeakyReLU' (negative slope 0.1), 'ReLU', or None/'Identity'."""
    if name is None or name == "Identity":
        return nn.Identity()
    if name == "SiLU":
        return nn.SiLU(inplace=True)
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "ReLU":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)}")


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the YOLOv5 settings used everywhere in the model."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 for an odd kernel."""
    return dilation * (kernel_size - 1) // 2


class Conv(Block):
    """Conv2d (no bias) + BatchNorm + activation; in deploy form Conv2d with bias + activation.

    YAML args: [out_channels, kernel_size=1, stride=1, padding=None (same), groups=1, dilation=1].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.deploy = deploy
        padding = same_padding(kernel_size, dilation) if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=deploy
        )
        self.bn = nn.Identity() if deploy else batch_norm(out_channels)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> Conv:
        """Fold the BatchNorm into the conv (in place, idempotent)."""
        if self.deploy:
            return self
        kernel, bias = fuse_conv_bn(self.conv.weight, self.bn, self.conv.bias)
        self.conv = conv_from_kernel(self.conv, kernel, bias)
        self.bn = nn.Identity()
        self.deploy = True
        return self

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [
            {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 1},
            {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "stride": 2, "groups": 2},
            {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "stride": 1, "groups": 8},
            {"in_channels": 3, "out_channels": 8, "kernel_size": 6, "stride": 2, "padding": 2},
            {"in_channels": 8, "out_channels": 4, "kernel_size": 1, "stride": 1},
        ]


class Bottleneck(Block):
    """1x1 reduce, then a 3x3 block (Conv or RepVGGBlock), plus the input when shapes allow.

    YAML args: [out_channels, shortcut=True, groups=1, expansion=0.5].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        groups: int = 1,
        expansion: float = 0.5,
        conv3x3: type[nn.Module] = Conv,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.reduce = Conv(in_channels, hidden, 1, 1, activation=activation, deploy=deploy)
        self.spatial = conv3x3(
            hidden, out_channels, kernel_size=3, stride=1, groups=groups, activation=activation, deploy=deploy
        )
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.spatial(self.reduce(x))
        return x + y if self.add else y

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [
            {"in_channels": 8, "out_channels": 8, "shortcut": True},
            {"in_channels": 6, "out_channels": 8, "shortcut": True, "groups": 2},
        ]


class C3(Block):
    """CSP block with three 1x1 convs: half the channels go through `repeats` bottlenecks.

    YAML args: [out_channels, shortcut=True, conv3x3='Conv' (any registered 3x3 block, e.g. RepVGGBlock),
    groups=1, expansion=0.5]; the YAML `number` is the bottleneck count.
    """

    repeats_as_argument = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        repeats: int = 1,
        shortcut: bool = True,
        conv3x3: type[nn.Module] = Conv,
        groups: int = 1,
        expansion: float = 0.5,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        options = {"activation": activation, "deploy": deploy}
        self.conv_main = Conv(in_channels, hidden, 1, 1, **options)
        self.conv_skip = Conv(in_channels, hidden, 1, 1, **options)
        self.conv_out = Conv(2 * hidden, out_channels, 1, 1, **options)
        self.bottlenecks = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, groups, 1.0, conv3x3, **options) for _ in range(repeats))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(torch.cat((self.bottlenecks(self.conv_main(x)), self.conv_skip(x)), 1))

    @classmethod
    def yaml_args(cls, args: list[Any], context: BuildContext) -> list[Any]:
        if len(args) >= 2 and isinstance(args[1], str):
            args[1] = context.lookup(args[1])
        return args

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [
            {"in_channels": 8, "out_channels": 8, "repeats": 2, "shortcut": True},
            {"in_channels": 6, "out_channels": 12, "repeats": 1, "shortcut": False},
        ]


class SPPF(Block):
    """Spatial pyramid pooling, fast: three chained stride-1 max pools, concatenated with the input.

    YAML args: [out_channels, kernel_size=5].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv_in = Conv(in_channels, hidden, 1, 1, activation=activation, deploy=deploy)
        self.conv_out = Conv(hidden * 4, out_channels, 1, 1, activation=activation, deploy=deploy)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        pooled1 = self.pool(x)
        pooled2 = self.pool(pooled1)
        return self.conv_out(torch.cat((x, pooled1, pooled2, self.pool(pooled2)), 1))

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [{"in_channels": 8, "out_channels": 6, "kernel_size": 5}]


class SPP(Block):
    """Spatial pyramid pooling (yolov5 v5.0 and older): parallel stride-1 max pools of several sizes,
    concatenated with their input. YAML args: [out_channels, kernel_sizes=(5, 9, 13)]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: tuple[int, ...] = (5, 9, 13),
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv_in = Conv(in_channels, hidden, 1, 1, activation=activation, deploy=deploy)
        self.conv_out = Conv(
            hidden * (len(kernel_sizes) + 1), out_channels, 1, 1, activation=activation, deploy=deploy
        )
        self.pools = nn.ModuleList(nn.MaxPool2d(size, stride=1, padding=size // 2) for size in kernel_sizes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        return self.conv_out(torch.cat([x, *(pool(x) for pool in self.pools)], 1))

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [{"in_channels": 8, "out_channels": 6, "kernel_sizes": (3, 5)}]


class Focus(Block):
    """Space to depth, then a Conv (the stem of yolov5 v5.0 and older): each 2x2 pixel block becomes four
    channels, in the order (even row, even column), (odd, even), (even, odd), (odd, odd).
    YAML args: [out_channels, kernel_size=1, stride=1, padding=None, groups=1]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.conv = Conv(
            in_channels * 4,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups,
            activation=activation,
            deploy=deploy,
        )

    def forward(self, x: Tensor) -> Tensor:
        quarters = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(quarters, 1))  # (B, 4C, H/2, W/2); H and W even, as in a model


class Concat(Block):
    """Concatenate the inputs along the channel dimension. YAML args: [1]."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.dimension = dimension

    def forward(self, inputs: list[Tensor]) -> Tensor:
        return torch.cat(inputs, self.dimension)

    @classmethod
    def from_yaml(
        cls, in_channels: list[int], args: list[Any], repeats: int, context: BuildContext
    ) -> tuple[nn.Module, int]:
        dimension = args[0] if args else 1
        if dimension != 1:
            raise ValueError("Concat joins feature maps along channels: its argument must be 1")
        return cls(dimension), sum(in_channels)


class Upsample(Block):
    """Resize by interpolation. YAML args like nn.Upsample: [size=None, scale_factor=2, mode='nearest']."""

    def __init__(self, size: int | None = None, scale_factor: float = 2, mode: str = "nearest") -> None:
        super().__init__()
        self.size = None if size in (None, "None") else size
        self.scale_factor = None if self.size is not None else float(scale_factor)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode)

    @classmethod
    def from_yaml(
        cls, in_channels: list[int], args: list[Any], repeats: int, context: BuildContext
    ) -> tuple[nn.Module, int]:
        if len(in_channels) != 1:
            raise ValueError("Upsample takes one input")
        return cls(*args), in_channels[0]
