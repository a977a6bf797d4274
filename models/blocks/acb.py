"""ACNet's asymmetric convolution block (Ding et al., ICCV 2019)."""

from __future__ import annotations

from torch import Tensor

from models.blocks.repvgg import ReparamBlock, conv_bn, fuse_branch
from models.reparam import KernelBias, sum_branches


class ACBlock(ReparamBlock):
    """act(BN(conv_kxk(x)) + BN(conv_1xk(x)) + BN(conv_kx1(x))).

    The 1xk conv pads only the width and the kx1 only the height, so at any stride each reads the centre
    row (column) of the kxk window and folds into it. YAML args: [out_channels, kernel_size=3, stride=1,
    groups=1].
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
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, activation, deploy)
        if not deploy:
            pad = self.padding
            self.branch_kxk = conv_bn(in_channels, out_channels, kernel_size, stride, groups)
            self.branch_1xk = conv_bn(in_channels, out_channels, (1, kernel_size), stride, groups, (0, pad))
            self.branch_kx1 = conv_bn(in_channels, out_channels, (kernel_size, 1), stride, groups, (pad, 0))

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.branch_kxk(x) + self.branch_1xk(x) + self.branch_kx1(x)

    def fused_kernel_bias(self) -> KernelBias:
        branches = (self.branch_kxk, self.branch_1xk, self.branch_kx1)
        return sum_branches([fuse_branch(branch, self.kernel_size) for branch in branches])
