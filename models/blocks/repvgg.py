"""The RepVGG family: the shared skeleton of blocks that fold into one kxk conv, and RepVGGBlock itself.

ReparamBlock owns what every such block shares (argument checks, the deploy conv, forward in deploy form,
the in-place `reparameterize()`); a subclass builds its training branches, runs them in
`forward_branches` and reduces them to one (kernel, bias) pair in `fused_kernel_bias` with the pure
functions of models/reparam.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.blocks.base import Block
from models.blocks.common import batch_norm, make_activation, same_padding
from models.reparam import KernelBias, fuse_conv_bn, identity_kernel, pad_kernel_center, sum_branches


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int,
    groups: int,
    padding: int | tuple[int, int] | None = None,
) -> nn.Sequential:
    """A bias-free conv followed by BatchNorm, one branch of a block (no reparameterize of its own).

    padding defaults to 'same' for an odd square kernel.
    """
    padding = same_padding(kernel_size) if padding is None else padding
    branch = nn.Sequential()
    branch.add_module(
        "conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    )
    branch.add_module("bn", batch_norm(out_channels))
    return branch


def fuse_branch(branch: nn.Sequential, kernel_size: int) -> KernelBias:
    """A conv_bn branch as (kernel, bias), its kernel zero-padded to kernel_size x kernel_size."""
    kernel, bias = fuse_conv_bn(branch.conv.weight, branch.bn)
    return pad_kernel_center(kernel, kernel_size), bias


def check_block_arguments(
    block: str, in_channels: Any, out_channels: Any, kernel_size: Any, stride: Any, groups: Any
) -> None:
    """ValueError in one sentence when the geometry cannot make a block (e.g. a string from a YAML row)."""
    values = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel_size": kernel_size,
        "stride": stride,
        "groups": groups,
    }
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{block}'s {name} must be a positive integer, got {value!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"{block} needs an odd kernel size, got {kernel_size}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{block}'s groups ({groups}) must divide in_channels ({in_channels}) and out_channels "
            f"({out_channels})"
        )


class ReparamBlock(Block):
    """act(sum of training branches) that folds into act(conv_kxk(x) + bias).

    Subclasses implement `build_branches()` (called by this constructor unless deploy),
    `forward_branches(x)` and `fused_kernel_bias()`; a block with options of its own (MobileOne's k) stores
    them before calling this constructor. YAML args: [out_channels, kernel_size=3,
    stride=1, groups=1, then the block's own options].
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
        check_block_arguments(type(self).__name__, in_channels, out_channels, kernel_size, stride, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.padding = same_padding(kernel_size)
        self.deploy = deploy
        if deploy:
            self.conv = self.deploy_conv()
        else:
            self.build_branches()
        self.act = make_activation(activation)

    @property
    def has_identity(self) -> bool:
        """Whether an identity branch fits: same channels and stride 1."""
        return self.in_channels == self.out_channels and self.stride == 1

    def deploy_conv(self) -> nn.Conv2d:
        """The fused form's single kxk conv with bias."""
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            groups=self.groups,
        )

    def identity(self, reference: Tensor) -> Tensor:
        """The identity as a kernel with this block's groups, dtype and device of `reference`."""
        return identity_kernel(
            self.in_channels, self.groups, self.kernel_size, reference.dtype, reference.device
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.act(self.conv(x))
        return self.act(self.forward_branches(x))

    def build_branches(self) -> None:
        """Create the training-form branches from the geometry attributes (not called when deploy)."""
        raise NotImplementedError

    def forward_branches(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def fused_kernel_bias(self) -> KernelBias:
        """(kernel Tensor[out, in/groups, k, k], bias Tensor[out]) equal to the training form in eval."""
        raise NotImplementedError

    @torch.no_grad()
    def reparameterize(self) -> ReparamBlock:
        """Fold all branches into one kxk conv with bias (in place, idempotent).

        Uses the BatchNorms' running statistics, so the result equals the eval-mode training form whatever
        mode the block is in.
        """
        if self.deploy:
            return self
        kernel, bias = self.fused_kernel_bias()
        conv = self.deploy_conv().to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        for name in [name for name in self._modules if name != "act"]:
            delattr(self, name)
        for name in list(self._parameters) + list(self._buffers):
            delattr(self, name)
        self.conv = conv
        self.deploy = True
        return self

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        """Stride 1 and 2, groups 1, 2 and depthwise, in == out and in != out, a 5x5 kernel."""
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


class RepVGGBlock(ReparamBlock):
    """act(BN(conv_kxk(x)) + BN(conv_1x1(x)) [+ BN(x) when in == out and stride == 1]).

    `deploy=True` builds the fused form, a single kxk conv with bias, directly; `reparameterize()` turns
    the training form into it in place. YAML args: [out_channels, kernel_size=3, stride=1, groups=1].
    """

    def build_branches(self) -> None:
        geometry = (self.in_channels, self.out_channels)
        self.branch_kxk = conv_bn(*geometry, self.kernel_size, self.stride, self.groups)
        self.branch_1x1 = conv_bn(*geometry, 1, self.stride, self.groups)
        self.branch_identity = batch_norm(self.in_channels) if self.has_identity else None

    def forward_branches(self, x: Tensor) -> Tensor:
        y = self.branch_kxk(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            y = y + self.branch_identity(x)
        return y

    @torch.no_grad()
    def init_side_branches(self, gamma: float) -> None:
        """Set the BN scale of the 1x1 and identity branches (hyp rep_branch_gamma); 0 makes the block
        start as its kxk conv+BN alone."""
        if self.deploy:
            return
        self.branch_1x1.bn.weight.fill_(gamma)
        if self.branch_identity is not None:
            self.branch_identity.weight.fill_(gamma)

    def fused_kernel_bias(self) -> KernelBias:
        branches = [
            fuse_branch(self.branch_kxk, self.kernel_size),
            fuse_branch(self.branch_1x1, self.kernel_size),
        ]
        if self.branch_identity is not None:
            identity = self.identity(self.branch_kxk.conv.weight)
            branches.append(fuse_conv_bn(identity, self.branch_identity))
        return sum_branches(branches)
