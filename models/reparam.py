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
    """Zero-pad a smaller odd kernel (e.g. 1x1) to `kernel_size` x `kernel_size`, keeping it centred."""
    pad = (kernel_size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad, pad, pad, pad]) if pad > 0 else kernel


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The kernel of a grouped conv that copies its input: Tensor[channels, channels/groups, k, k].

    Output channel i reads input channel i, which is local index i % (channels/groups) inside its group.
    """
    channels_per_group = channels // groups
    kernel = torch.zeros(channels, channels_per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index % channels_per_group, kernel_size // 2, kernel_size // 2] = 1
    return kernel


def sum_branches(branches: list[KernelBias]) -> KernelBias:
    """Parallel convs with equal geometry add up to one conv: kernels and biases sum."""
    kernels, biases = zip(*branches)
    return torch.stack(kernels).sum(0), torch.stack(biases).sum(0)


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
