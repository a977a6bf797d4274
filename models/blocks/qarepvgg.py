"""QARepVGG (Chu et al. 2022, the block of YOLOv6 v3): RepVGG made friendly to INT8 quantization."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.blocks.common import batch_norm
from models.blocks.repvgg import ReparamBlock, conv_bn, copy_batch_norm, fuse_branch, pointwise_conv
from models.reparam import KernelBias, fuse_conv_bn, pad_kernel_center, sum_branches


class QARepVGGBlock(ReparamBlock):
    """act(BN(BN(conv_kxk(x)) + conv_1x1(x) [+ x when in == out and stride == 1])).

    The 1x1 and identity branches carry no BatchNorm of their own and one BN follows the sum, which keeps
    the fused kernel's per-channel ranges close and so its INT8 error small.
    YAML args: [out_channels, kernel_size=3, stride=1, groups=1].
    """

    def build_branches(self) -> None:
        geometry = (self.in_channels, self.out_channels)
        self.branch_kxk = conv_bn(*geometry, self.kernel_size, self.stride, self.groups)
        self.branch_1x1 = pointwise_conv(*geometry, self.stride, self.groups)
        self.bn = batch_norm(self.out_channels)

    def forward_branches(self, x: Tensor) -> Tensor:
        y = self.branch_kxk(x) + self.branch_1x1(x)
        if self.has_identity:
            y = y + x
        return self.bn(y)

    @torch.no_grad()
    def grow_from_plain(self, plain: nn.Module) -> None:
        """The identity has no parameter to silence, so the kxk kernel gives it back: the kxk branch is
        the plain kernel minus the identity kernel behind an identity BN (scale 1, shift 0, mean 0,
        variance 1 - eps), the 1x1 starts at zero, and the block's BN after the sum is the plain BN.
        The sum is then the plain conv's output in training and eval mode alike."""
        kernel = plain.conv.weight
        if self.has_identity:
            kernel = kernel - self.identity(kernel)
        self.branch_kxk.conv.weight.copy_(kernel)
        bn = self.branch_kxk.bn
        bn.reset_parameters()
        bn.running_var.fill_(1 - bn.eps)
        self.branch_1x1.weight.zero_()
        copy_batch_norm(self.bn, plain.bn)

    def fused_kernel_bias(self) -> KernelBias:
        kernel_kxk, bias_kxk = fuse_branch(self.branch_kxk, self.kernel_size)
        kernel_1x1 = pad_kernel_center(self.branch_1x1.weight, self.kernel_size)
        branches = [(kernel_kxk, bias_kxk), (kernel_1x1, bias_kxk.new_zeros(self.out_channels))]
        if self.has_identity:
            branches.append((self.identity(kernel_kxk), bias_kxk.new_zeros(self.out_channels)))
        kernel, bias = sum_branches(branches)
        return fuse_conv_bn(kernel, self.bn, bias)
