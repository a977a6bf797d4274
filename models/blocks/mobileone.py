"""MobileOne's over-parameterized block (Vasu et al., CVPR 2023)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from models.blocks.common import batch_norm
from models.blocks.repvgg import ReparamBlock, conv_bn, copy_conv_bn, fuse_branch, silence_batch_norm
from models.reparam import KernelBias, fuse_conv_bn, sum_branches


class MobileOneBlock(ReparamBlock):
    """act(sum of k BN(conv_kxk(x)) + BN(conv_1x1(x)) [+ BN(x) when in == out and stride == 1]).

    k is the over-parameterization factor (MobileOne's k; 1 makes it RepVGG's block).
    YAML args: [out_channels, kernel_size=3, stride=1, groups=1, k=1].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        k: int = 1,
        activation: str | None = "SiLU",
        deploy: bool = False,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(
                f"MobileOneBlock's k (the number of kxk branches) must be a positive integer, got {k!r}"
            )
        self.k = k  # before the base class builds the branches
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, activation, deploy)

    def build_branches(self) -> None:
        geometry = (self.in_channels, self.out_channels)
        self.branches_kxk = nn.ModuleList(
            conv_bn(*geometry, self.kernel_size, self.stride, self.groups) for _ in range(self.k)
        )
        self.branch_1x1 = conv_bn(*geometry, 1, self.stride, self.groups)
        self.branch_identity = batch_norm(self.in_channels) if self.has_identity else None

    def forward_branches(self, x: Tensor) -> Tensor:
        y = self.branch_1x1(x)
        for branch in self.branches_kxk:
            y = y + branch(x)
        if self.branch_identity is not None:
            y = y + self.branch_identity(x)
        return y

    def grow_from_plain(self, plain: nn.Module) -> None:
        """The first kxk branch takes the plain conv; the other k - 1, the 1x1 and identity start silent."""
        copy_conv_bn(self.branches_kxk[0], plain)
        for branch in (*self.branches_kxk[1:], self.branch_1x1):
            silence_batch_norm(branch.bn)
        if self.branch_identity is not None:
            silence_batch_norm(self.branch_identity)

    def fused_kernel_bias(self) -> KernelBias:
        branches = [fuse_branch(branch, self.kernel_size) for branch in (*self.branches_kxk, self.branch_1x1)]
        if self.branch_identity is not None:
            identity = self.identity(self.branch_1x1.conv.weight)
            branches.append(fuse_conv_bn(identity, self.branch_identity))
        return sum_branches(branches)

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        examples = super().example_configs()
        return [{**example, "k": 1} for example in examples] + [{**example, "k": 3} for example in examples]
