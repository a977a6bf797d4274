"""ACNet's asymmetric convolution block (Ding et al., ICCV 2019)."""

from __future__ import annotations

from torch import Tensor, nn

from models.blocks.repvgg import ReparamBlock, conv_bn, copy_conv_bn, fuse_branch, silence_batch_norm
from models.reparam import KernelBias, sum_branches


class ACBlock(ReparamBlock):
    """act(BN(conv_kxk(x)) + BN(conv_1xk(x)) + BN(conv_kx1(x))).

    The 1xk conv pads only the width and the kx1 only the height, so at any stride each reads the centre
    row (column) of the kxk window and folds into it. YAML args: [out_channels, kernel_size=3, stride=1,
    groups=1].
    """

    def build_branches(self) -> None:
        geometry, k, pad = (self.in_channels, self.out_channels), self.kernel_size, self.padding
        self.branch_kxk = conv_bn(*geometry, k, self.stride, self.groups)
        self.branch_1xk = conv_bn(*geometry, (1, k), self.stride, self.groups, (0, pad))
        self.branch_kx1 = conv_bn(*geometry, (k, 1), self.stride, self.groups, (pad, 0))

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.branch_kxk(x) + self.branch_1xk(x) + self.branch_kx1(x)

    def grow_from_plain(self, plain: nn.Module) -> None:
        copy_conv_bn(self.branch_kxk, plain)
        silence_batch_norm(self.branch_1xk.bn)
        silence_batch_norm(self.branch_kx1.bn)

    def fused_kernel_bias(self) -> KernelBias:
        branches = (self.branch_kxk, self.branch_1xk, self.branch_kx1)
        return sum_branches([fuse_branch(branch, self.kernel_size) for branch in branches])
