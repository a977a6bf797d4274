"""Diverse Branch Block (Ding et al., CVPR 2021): four differently shaped branches, one kxk conv fused."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks.common import batch_norm
from models.blocks.repvgg import ReparamBlock, conv_bn, copy_conv_bn, fuse_branch, silence_batch_norm
from models.reparam import (
    KernelBias,
    average_pool_kernel,
    batch_norm_constant,
    compose_1x1_kxk,
    fuse_conv_bn,
    identity_kernel,
    sum_branches,
)


class BatchNormPad(nn.Module):
    """BatchNorm, then a border of `padding` pixels holding the BN's output for a zero input.

    The kxk conv (or average pool) that follows then sees, at the border, exactly what it would see if the
    1x1 conv before this BN had run on a zero-padded input, which is what lets the branch fold into one
    zero-padded kxk conv (DBB's BNAndPadLayer; zero padding here would make the fusion inexact).
    """

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.bn = batch_norm(channels)
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        if self.padding == 0:
            return y
        border = batch_norm_constant(self.bn).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        return F.pad(y - border, [self.padding] * 4) + border


def sequential_1x1_kxk(
    in_channels: int, middle: int, out_channels: int, second: nn.Module, groups: int, padding: int
) -> nn.Sequential:
    """1x1 conv -> BN with BN-valued padding -> `second` (a kxk conv or average pool) -> BN."""
    branch = nn.Sequential()
    branch.add_module("conv_1x1", nn.Conv2d(in_channels, middle, 1, groups=groups, bias=False))
    branch.add_module("bn_pad", BatchNormPad(middle, padding))
    branch.add_module("second", second)
    branch.add_module("bn", batch_norm(out_channels))
    return branch


class DiverseBranchBlock(ReparamBlock):
    """act(BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(conv_kxk(BN(conv_1x1(x)))) + BN(avg_kxk(BN(conv_1x1(x))))).

    The middle 1x1 of the 1x1 -> kxk branch keeps in_channels and starts as the identity (as in DBB), so
    that branch begins as a second kxk conv. YAML args: [out_channels, kernel_size=3, stride=1, groups=1].
    """

    def build_branches(self) -> None:
        in_channels, out_channels, k = self.in_channels, self.out_channels, self.kernel_size
        stride, groups, pad = self.stride, self.groups, self.padding
        self.branch_kxk = conv_bn(in_channels, out_channels, k, stride, groups)
        self.branch_1x1 = conv_bn(in_channels, out_channels, 1, stride, groups)
        conv_kxk = nn.Conv2d(in_channels, out_channels, k, stride, 0, groups=groups, bias=False)
        self.branch_1x1_kxk = sequential_1x1_kxk(
            in_channels, in_channels, out_channels, conv_kxk, groups, pad
        )
        with torch.no_grad():
            self.branch_1x1_kxk.conv_1x1.weight.copy_(identity_kernel(in_channels, groups, 1))
        average = nn.AvgPool2d(k, stride, 0)
        self.branch_1x1_avg = sequential_1x1_kxk(
            in_channels, out_channels, out_channels, average, groups, pad
        )

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.branch_kxk(x) + self.branch_1x1(x) + self.branch_1x1_kxk(x) + self.branch_1x1_avg(x)

    def grow_from_plain(self, plain: nn.Module) -> None:
        """The three other branches end in a BN of their own: silenced, each adds zero whatever it reads."""
        copy_conv_bn(self.branch_kxk, plain)
        for branch in (self.branch_1x1, self.branch_1x1_kxk, self.branch_1x1_avg):
            silence_batch_norm(branch.bn)

    def fused_kernel_bias(self) -> KernelBias:
        k, groups = self.kernel_size, self.groups
        sequential, averaged = self.branch_1x1_kxk, self.branch_1x1_avg
        first = fuse_conv_bn(sequential.conv_1x1.weight, sequential.bn_pad.bn)
        second = fuse_conv_bn(sequential.second.weight, sequential.bn)
        weight = averaged.conv_1x1.weight
        average = average_pool_kernel(self.out_channels, groups, k, weight.dtype, weight.device)
        first_avg = fuse_conv_bn(weight, averaged.bn_pad.bn)
        second_avg = fuse_conv_bn(average, averaged.bn)
        return sum_branches(
            [
                fuse_branch(self.branch_kxk, k),
                fuse_branch(self.branch_1x1, k),
                compose_1x1_kxk(first, second, groups),
                compose_1x1_kxk(first_avg, second_avg, groups),
            ]
        )
