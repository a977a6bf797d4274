"""OREPA, online convolutional re-parameterization (Hu et al., CVPR 2022).

The training form has the branches of a DBB-like block but keeps them as kernels: each forward merges
them, weighted by learnable per-output-channel scales instead of per-branch BatchNorms, into ONE kxk
kernel, then runs one conv and one BN. Training therefore costs about one conv (plus the kernel merge,
which is independent of the batch and image size) rather than four branches of feature maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks.common import batch_norm
from models.blocks.repvgg import ReparamBlock, copy_batch_norm
from models.reparam import (
    KernelBias,
    compose_kernels,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel_center,
    scale_output_channels,
    spread_1x1,
)

# Initial per-branch scales (kxk, 1x1, 1x1 -> kxk, 1x1 -> avg), after OREPA's reference initialization.
INITIAL_SCALES = (0.25, 1.0, 0.5, 0.25)


class OREPABlock(ReparamBlock):
    """act(BN(conv(x, merged kernel))), merged = sum of scale_b * kernel_b over four online branches:

    kxk; 1x1 (zero-padded to kxk); 1x1 -> kxk (composed, the 1x1 starting as the identity); 1x1 -> kxk
    average. scale_b: Tensor[out] each, the `branch_scales` Parameter Tensor[4, out].
    YAML args: [out_channels, kernel_size=3, stride=1, groups=1].
    """

    def build_branches(self) -> None:
        out_channels, in_per_group, k = self.out_channels, self.in_channels // self.groups, self.kernel_size
        self.weight_kxk = nn.Parameter(kaiming_kernel(out_channels, in_per_group, k))
        self.weight_1x1 = nn.Parameter(kaiming_kernel(out_channels, in_per_group, 1))
        self.weight_1x1_kxk_first = nn.Parameter(identity_kernel(self.in_channels, self.groups, 1))
        self.weight_1x1_kxk_second = nn.Parameter(kaiming_kernel(out_channels, in_per_group, k))
        self.weight_1x1_avg = nn.Parameter(kaiming_kernel(out_channels, in_per_group, 1))
        self.register_buffer("average_window", torch.full((k, k), 1.0 / k**2), persistent=False)
        scales = torch.tensor(INITIAL_SCALES)[:, None].repeat(1, out_channels)  # (4, out)
        self.branch_scales = nn.Parameter(scales)
        self.bn = batch_norm(out_channels)

    def merged_kernel(self) -> Tensor:
        """The one kernel Tensor[out, in/groups, k, k] the branches amount to, differentiable.

        The 1x1 kernels are scaled before they are spread to kxk, so that autograd keeps no kxk-sized
        copies of them for the backward pass (training memory stays close to a plain conv's).
        """
        scale_kxk, scale_1x1, scale_1x1_kxk, scale_avg = self.branch_scales
        composed = compose_kernels(self.weight_1x1_kxk_first, self.weight_1x1_kxk_second, self.groups)
        return (
            scale_output_channels(self.weight_kxk, scale_kxk)
            + pad_kernel_center(scale_output_channels(self.weight_1x1, scale_1x1), self.kernel_size)
            + scale_output_channels(composed, scale_1x1_kxk)
            + spread_1x1(scale_output_channels(self.weight_1x1_avg, scale_avg), self.average_window)
        )

    def forward_branches(self, x: Tensor) -> Tensor:
        # The merged kernel in the input's layout: a contiguous kernel against a channels_last input (as
        # train_step runs the model) sends the conv, BN and SiLU gradients through slow layout conversions.
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
        kernel = self.merged_kernel()
        kernel = kernel.contiguous(memory_format=layout) if layout is not None else kernel
        return self.bn(F.conv2d(x, kernel, None, self.stride, self.padding, 1, self.groups))

    @torch.no_grad()
    def grow_from_plain(self, plain: nn.Module) -> None:
        """The kxk kernel is the plain one at scale 1 and the other branches' scales are 0, so the merged
        kernel is the plain kernel and the one BN the plain BN; the scales' gradients grow the branches."""
        self.weight_kxk.copy_(plain.conv.weight)
        self.branch_scales.zero_()
        self.branch_scales[0].fill_(1.0)
        copy_batch_norm(self.bn, plain.bn)

    def fused_kernel_bias(self) -> KernelBias:
        return fuse_conv_bn(self.merged_kernel(), self.bn)


def kaiming_kernel(out_channels: int, in_per_group: int, kernel_size: int) -> Tensor:
    """Tensor[out, in/groups, k, k] initialized as nn.Conv2d initializes its weight."""
    kernel = torch.empty(out_channels, in_per_group, kernel_size, kernel_size)
    nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))
    return kernel
