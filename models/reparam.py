"""Structural re-parameterization: the fusion math, written once, and the whole-model walker.

Every fusable branch is reduced to a `(kernel, bias)` pair: kernel Tensor[out, in/groups, k, k],
bias Tensor[out]. Branches of one block are summed into a single conv.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGGER = logging.getLogger(__name__)

KernelBias = tuple[Tensor, Tensor]


def fuse_conv_bn(kernel: Tensor, bn: nn.BatchNorm2d, conv_bias: Tensor | None = None) -> KernelBias:
    """Fold eval-mode BatchNorm into the preceding conv: BN(conv(x)) == conv'(x) with the result.

    kernel: Tensor[out, in/groups, k, k]; conv_bias: Tensor[out] or None.
    """
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn.running_mean)
    return kernel * scale.reshape(-1, 1, 1, 1), beta + (bias - bn.running_mean) * scale


def pad_kernel_center(kernel: Tensor, kernel_size: int) -> Tensor:
    """Zero-pad a smaller odd kernel (1x1, or ACNet's 1xk and kx1) to kernel_size x kernel_size, centred."""
    pad_h = (kernel_size - kernel.shape[-2]) // 2
    pad_w = (kernel_size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad_w, pad_w, pad_h, pad_h]) if pad_h > 0 or pad_w > 0 else kernel


def batch_norm_constant(bn: nn.BatchNorm2d) -> Tensor:
    """Tensor[C]: what eval-mode `bn` outputs for a zero input, beta - mean * gamma / std.

    A kxk conv that follows a BN'd 1x1 conv composes into one kernel exactly only if its padding holds
    this value (the output of the 1x1 branch at a zero-padded pixel), not zero (DBB's BN-and-pad layer).
    """
    return fuse_conv_bn(torch.zeros_like(bn.running_mean).reshape(-1, 1, 1, 1), bn)[1]


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The kernel of a grouped conv that copies its input: Tensor[channels, channels/groups, k, k]."""
    window = torch.zeros(kernel_size, kernel_size, dtype=dtype, device=device)
    window[kernel_size // 2, kernel_size // 2] = 1
    return channelwise_kernel(channels, groups, window)


def average_pool_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """AvgPool2d(kernel_size), zeros counted, as a grouped kernel: Tensor[channels, channels/groups, k, k]."""
    window = torch.full((kernel_size, kernel_size), 1.0 / kernel_size**2, dtype=dtype, device=device)
    return channelwise_kernel(channels, groups, window)


def channelwise_kernel(channels: int, groups: int, window: Tensor) -> Tensor:
    """Grouped kernel Tensor[channels, channels/groups, k, k] applying `window` Tensor[k, k] per channel.

    Output channel i reads only input channel i, which is local index i % (channels/groups) in its group.
    """
    channels_per_group = channels // groups
    kernel = window.new_zeros(channels, channels_per_group, *window.shape)
    index = torch.arange(channels, device=window.device)
    kernel[index, index % channels_per_group] = window
    return kernel


def sum_branches(branches: list[KernelBias]) -> KernelBias:
    """Parallel convs with equal geometry add up to one conv: kernels and biases sum."""
    kernels, biases = zip(*branches)
    return torch.stack(kernels).sum(0), torch.stack(biases).sum(0)


def compose_kernels(kernel_1x1: Tensor, kernel_kxk: Tensor, groups: int = 1) -> Tensor:
    """The kernel of a bias-free 1x1 conv followed by a bias-free, zero-padded kxk conv (both `groups`).

    kernel_1x1: Tensor[mid, in/groups, 1, 1]; kernel_kxk: Tensor[out, mid/groups, k, k]
    -> Tensor[out, in/groups, k, k]. Zero padding is exact here: the 1x1 conv of a zero pixel is zero.
    """
    mid, in_per_group = kernel_1x1.shape[:2]
    out, mid_per_group, height, width = kernel_kxk.shape
    grouped_1x1 = kernel_1x1.reshape(groups, mid // groups, in_per_group)  # (g, mid/g, in/g)
    grouped_kxk = kernel_kxk.reshape(
        groups, out // groups, mid_per_group, height, width
    )  # (g, out/g, mid/g, k, k)
    composed = torch.einsum("gomhw,gmi->goihw", grouped_kxk, grouped_1x1)  # (g, out/g, in/g, k, k)
    return composed.reshape(out, in_per_group, height, width)


def compose_1x1_kxk(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    """A 1x1 conv with bias followed by a kxk conv with bias, both with `groups` groups, as one kxk conv.

    first: (Tensor[mid, in/groups, 1, 1], Tensor[mid]); second: (Tensor[out, mid/groups, k, k], Tensor[out]).
    Exact when the kxk conv pads with the first conv's bias rather than zero (see batch_norm_constant):
    then every input pixel of the kxk conv, padding included, is the 1x1 output, and the first bias passes
    through the kxk conv as a constant map: out channel o gains sum over (m, h, w) of kernel[o, m] * bias[m].
    """
    (kernel_1x1, bias_1x1), (kernel_kxk, bias_kxk) = first, second
    out, mid_per_group = kernel_kxk.shape[:2]
    grouped_sums = kernel_kxk.sum((2, 3)).reshape(groups, out // groups, mid_per_group)  # (g, out/g, mid/g)
    grouped_bias = bias_1x1.reshape(groups, 1, mid_per_group)  # (g, 1, mid/g)
    bias = bias_kxk + (grouped_sums * grouped_bias).sum(2).reshape(out)
    return compose_kernels(kernel_1x1, kernel_kxk, groups), bias


def spread_1x1(kernel_1x1: Tensor, window: Tensor) -> Tensor:
    """A 1x1 kernel Tensor[out, in/groups, 1, 1] followed by a per-channel kxk `window` Tensor[k, k] (e.g.
    average pooling, 1/k^2 everywhere) as one kernel Tensor[out, in/groups, k, k]: compose_kernels with a
    channelwise_kernel, computed as the broadcast it amounts to."""
    return kernel_1x1 * window


def scale_output_channels(kernel: Tensor, scale: Tensor) -> Tensor:
    """kernel Tensor[out, ...] times scale Tensor[out] per output channel (OREPA's branch scales)."""
    return kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1)))


def conv_from_kernel(template: nn.Conv2d, kernel: Tensor, bias: Tensor) -> nn.Conv2d:
    """A new Conv2d with `template`'s geometry (stride, padding, groups, dilation) holding kernel and bias."""
    conv = nn.Conv2d(
        template.in_channels,
        kernel.shape[0],
        kernel.shape[-1],
        stride=template.stride,
        padding=template.padding,
        dilation=template.dilation,
        groups=template.groups,
        bias=True,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


def _reparameterize_children(module: nn.Module) -> int:
    count = 0
    for child in module.children():
        count += _reparameterize_children(child)
        fuse = getattr(child, "reparameterize", None)
        if callable(fuse):
            fuse()
            count += 1
    return count


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """Call `reparameterize()` on every submodule that has one, children before their parents.

    The root itself is not called (Model.reparameterize calls this walker). In place; returns `model`.
    """
    count = _reparameterize_children(model)
    LOGGER.debug("reparameterized %d modules", count)
    return model


def reparameterized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in its deploy form; `model` is left untouched."""
    fused = copy.deepcopy(model)
    fuse = getattr(fused, "reparameterize", None)
    return fuse() if callable(fuse) else reparameterize_model(fused)


def _flatten_outputs(output: Tensor | list | tuple) -> Tensor:
    if isinstance(output, Tensor):
        return output.flatten()
    return torch.cat([_flatten_outputs(item) for item in output])


@torch.no_grad()
def verify(model: nn.Module, fused: nn.Module, x: Tensor) -> tuple[float, float]:
    """Compare two models on input `x` in eval mode; returns (max_abs_err, max_rel_err).

    max_rel_err = max|a - b| / max|a|: the largest deviation relative to the largest reference output,
    which stays meaningful where individual outputs are near zero. Both models are restored to their
    previous train/eval mode.
    """
    modes = (model.training, fused.training)
    model.eval()
    fused.eval()
    try:
        reference = _flatten_outputs(model(x))
        candidate = _flatten_outputs(fused(x))
    finally:
        model.train(modes[0])
        fused.train(modes[1])
    max_abs = (reference - candidate).abs().max().item() if reference.numel() else 0.0
    scale = reference.abs().max().item() if reference.numel() else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)
