"""RepVGG block: kxk conv+BN, 1x1 conv+BN and identity BN in training, one kxk conv when deployed."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.blocks.base import Block
from models.blocks.common import batch_norm, make_activation, same_padding
from models.reparam import (
    conv_from_kernel,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel_center,
    sum_branches,
)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> nn.Sequential:
    """A bias-free conv followed by BatchNorm; a branch of RepVGGBlock (no reparameterize of its own)."""
    padding = same_padding(kernel_size)
    branch = nn.Sequential()
    branch.add_module(
        "conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    )
    branch.add_module("bn", batch_norm(out_channels))
    return branch


class RepVGGBlock(Block):
    """act(BN(conv_kxk(x)) + BN(conv_1x1(x)) [+ BN(x) when in == out and stride == 1]).

    `deploy=True` builds the fused form, a single kxk conv with bias, directly; `reparameterize()` turns
    the training form into it in place. YAML args: [out_channels, kernel_size=3, stride=1, groups=1].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"RepVGGBlock needs an odd kernel size, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.deploy = deploy
        if deploy:
            padding = same_padding(kernel_size)
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups)
        else:
            self.branch_kxk = conv_bn(in_channels, out_channels, kernel_size, stride, groups)
            self.branch_1x1 = conv_bn(in_channels, out_channels, 1, stride, groups)
            has_identity = in_channels == out_channels and stride == 1
            self.branch_identity = batch_norm(in_channels) if has_identity else None
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.act(self.conv(x))
        y = self.branch_kxk(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            y = y + self.branch_identity(x)
        return self.act(y)

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The (kernel Tensor[out, in/groups, k, k], bias Tensor[out]) equal to the training form in eval."""
        kxk = self.branch_kxk
        branches = [fuse_conv_bn(kxk.conv.weight, kxk.bn)]
        kernel_1x1, bias_1x1 = fuse_conv_bn(self.branch_1x1.conv.weight, self.branch_1x1.bn)
        branches.append((pad_kernel_center(kernel_1x1, self.kernel_size), bias_1x1))
        if self.branch_identity is not None:
            weight = kxk.conv.weight
            identity = identity_kernel(
                self.in_channels, self.groups, self.kernel_size, weight.dtype, weight.device
            )
            branches.append(fuse_conv_bn(identity, self.branch_identity))
        return sum_branches(branches)

    @torch.no_grad()
    def reparameterize(self) -> RepVGGBlock:
        """Fold all branches into one kxk conv with bias (in place, idempotent)."""
        if self.deploy:
            return self
        kernel, bias = self.fused_kernel_bias()
        self.conv = conv_from_kernel(self.branch_kxk.conv, kernel, bias)
        del self.branch_kxk, self.branch_1x1, self.branch_identity
        self.deploy = True
        return self

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        return [
            {"in_channels": 8, "out_channels": 8, "stride": 1},
            {"in_channels": 4, "out_channels": 8, "stride": 1},
            {"in_channels": 8, "out_channels": 8, "stride": 2},
            {"in_channels": 4, "out_channels": 6, "stride": 2},
            {"in_channels": 8, "out_channels": 8, "stride": 1, "groups": 2},
            {"in_channels": 8, "out_channels": 12, "stride": 2, "groups": 2},
            {"in_channels": 8, "out_channels": 8, "stride": 1, "groups": 8},
            {"in_channels": 8, "out_channels": 8, "stride": 2, "groups": 8},
            {"in_channels": 6, "out_channels": 6, "kernel_size": 5, "stride": 1, "groups": 3},
        ]
