"""The RepVGG family: the shared skeleton of blocks that fold into one kxk conv, and RepVGGBlock itself.

ReparamBlock owns what every such block shares (argument checks, the deploy conv, forward in deploy form,
the in-place `reparameterize()`); a subclass builds its training branches, runs them in
`forward_branches`, reduces them to one (kernel, bias) pair in `fused_kernel_bias` with the pure
functions of models/reparam.py, and grows from a trained plain Conv in `grow_from_plain`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks.base import Block
from models.blocks.common import batch_norm, make_activation, same_padding
from models.reparam import KernelBias, fuse_conv_bn, identity_kernel, pad_kernel_center, sum_branches


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 nn.Conv2d (no padding) that computes a stride s > 1 as taking every s-th row and column,
    then convolving at stride 1: the same function, parameters and state dict. It keeps a strided 1x1
    branch off the CPU kernel of torch 2.14 that corrupts the heap (a crash) while computing the weight
    gradient of a strided 1x1 conv in channels_last with fewer than 16 input channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        row, column = self.stride
        if (row, column) != (1, 1):
            x = x[..., ::row, ::column]
        return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)


def pointwise_conv(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free 1x1 conv: a PointwiseConv2d where torch's kernel would crash (strided, under 16 input
    channels), else a plain nn.Conv2d, whose arithmetic (and so a trained model's result) is unchanged."""
    if stride > 1 and in_channels < 16:
        return PointwiseConv2d(in_channels, out_channels, stride, groups)
    return nn.Conv2d(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)


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
    if kernel_size in (1, (1, 1)) and padding in (0, (0, 0)):
        conv = pointwise_conv(in_channels, out_channels, stride, groups)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    branch.add_module("conv", conv)
    branch.add_module("bn", batch_norm(out_channels))
    return branch


def fuse_branch(branch: nn.Sequential, kernel_size: int) -> KernelBias:
    """A conv_bn branch as (kernel, bias), its kernel zero-padded to kernel_size x kernel_size."""
    kernel, bias = fuse_conv_bn(branch.conv.weight, branch.bn)
    return pad_kernel_center(kernel, kernel_size), bias


@torch.no_grad()
def copy_conv_bn(branch: nn.Sequential, plain: nn.Module) -> None:
    """Make a conv_bn branch compute what the plain Conv's conv and BN compute: the kernel, the BN's
    affine parameters, running statistics and eps (the BN's output changes with eps)."""
    branch.conv.weight.copy_(plain.conv.weight)
    copy_batch_norm(branch.bn, plain.bn)


@torch.no_grad()
def copy_batch_norm(target: nn.BatchNorm2d, source: nn.BatchNorm2d) -> None:
    target.load_state_dict(source.state_dict())
    target.eps = source.eps


@torch.no_grad()
def silence_batch_norm(bn: nn.BatchNorm2d) -> None:
    """Scale and shift 0: the BN outputs zeros in training and in eval mode alike, so its branch adds
    nothing until training grows it."""
    bn.weight.zero_()
    bn.bias.zero_()


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

    def grow_from_plain(self, plain: nn.Module) -> None:
        """Start from a trained plain Conv (kxk conv + BN) of the same geometry: its conv and BN become
        the main kxk branch and every other branch starts at zero, so that the block computes the plain
        Conv's function exactly, in eval mode and (where the design allows) in training mode too.
        Call `check_plain` first; models/grow.py does."""
        raise NotImplementedError(f"{type(self).__name__} cannot grow from a plain Conv")

    def check_plain(self, plain: nn.Module) -> None:
        """ValueError in one sentence unless `plain` is a training-form Conv with this block's geometry."""
        conv = getattr(plain, "conv", None)
        if self.deploy or not isinstance(getattr(plain, "bn", None), nn.BatchNorm2d):
            raise ValueError("only a training-form Conv (conv + BN) grows into a training-form block")
        expected = (self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)
        geometry = (conv.stride, conv.padding, conv.groups, conv.dilation)
        wanted = ((self.stride,) * 2, (self.padding,) * 2, self.groups, (1, 1))
        if tuple(conv.weight.shape) != expected or geometry != wanted:
            raise ValueError(
                f"a conv of kernel {list(conv.weight.shape)}, stride {conv.stride[0]}, groups {conv.groups} "
                f"does not fit {type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"{self.kernel_size}, stride {self.stride}, groups {self.groups})"
            )

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

    def grow_from_plain(self, plain: nn.Module) -> None:
        copy_conv_bn(self.branch_kxk, plain)
        silence_batch_norm(self.branch_1x1.bn)
        if self.branch_identity is not None:
            silence_batch_norm(self.branch_identity)

    def fused_kernel_bias(self) -> KernelBias:
        branches = [
            fuse_branch(self.branch_kxk, self.kernel_size),
            fuse_branch(self.branch_1x1, self.kernel_size),
        ]
        if self.branch_identity is not None:
            identity = self.identity(self.branch_kxk.conv.weight)
            branches.append(fuse_conv_bn(identity, self.branch_identity))
        return sum_branches(branches)
