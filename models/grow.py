"""Weights from one model into another built from a different graph, the function kept where it can be.

Layer by layer (the same index in both graphs, then the same child names): a module of the same class
and shapes is copied as it is; a plain Conv at the position of a re-parameterizable block grows into it
through the block's own ``grow_from_plain`` (its conv and BN become the main kxk branch, every other
branch starts at zero), so a model grown from a plain network computes that network's function before
its first step; anything else keeps its fresh initialization and is named in the report (e.g. the
Detect convs when the class count differs, re-initialized as yolov5 does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.blocks.common import Conv
from models.blocks.repvgg import ReparamBlock


@dataclass
class TransferReport:
    """What a transfer did. Counts are state-dict tensors; elements are their numbers of values."""

    loaded: int = 0  # target tensors copied from the source as they are
    grown: int = 0  # plain Convs grown into re-parameterizable blocks
    grown_tensors: int = 0  # target tensors of those blocks (main branch from the Conv, the rest at zero)
    initialized: int = 0  # target tensors left as freshly initialized
    not_transferred: list[str] = field(default_factory=list)  # target modules left as initialized
    mismatches: list[str] = field(default_factory=list)  # why, for the first few of them
    source_elements: int = 0
    used_elements: int = 0  # source values that found a place in the target

    @property
    def fraction(self) -> float:
        """Share of the source's values that went into the target (1.0 for an empty source)."""
        return self.used_elements / self.source_elements if self.source_elements else 1.0

    def summary(self) -> str:
        grown = ""
        if self.grown:
            grown = (
                f"{self.grown} plain convs grown into re-parameterized blocks ({self.grown_tensors} tensors, "
            )
            grown += "side branches at zero), "
        text = (
            f"{self.loaded} tensors loaded as they are, {grown}{self.initialized} tensors newly initialized; "
            f"{self.fraction:.1%} of the weights' values used"
        )
        if self.not_transferred:
            names = ", ".join(self.not_transferred[:8])
            more = f" and {len(self.not_transferred) - 8} more" if len(self.not_transferred) > 8 else ""
            text += f"; not transferred: {names}{more}"
        return text

    def _leave(self, name: str, target: nn.Module, reason: str) -> None:
        self.initialized += len(target.state_dict())
        self.not_transferred.append(name.rstrip("."))
        if len(self.mismatches) < 5:
            self.mismatches.append(f"{name.rstrip('.')}: {reason}")


@torch.no_grad()
def transfer_weights(
    source: nn.Module, target: nn.Module, skip_suffixes: tuple[str, ...] = ()
) -> TransferReport:
    """Copy or grow `source`'s weights into `target` in place (see the module docstring).

    skip_suffixes: state-dict names ending so are left as the target has them (e.g. ".anchors", when the
    target's config brings its own anchors).
    """
    kept = {name: tensor for name, tensor in source.state_dict().items() if not name.endswith(skip_suffixes)}
    report = TransferReport(source_elements=sum(tensor.numel() for tensor in kept.values()))
    _transfer(source, target, "", report, skip_suffixes)
    return report


def _same_shapes(source: dict[str, Tensor], target: dict[str, Tensor]) -> bool:
    return source.keys() == target.keys() and all(source[k].shape == target[k].shape for k in target)


def _shape_difference(source: dict[str, Tensor], target: dict[str, Tensor]) -> str:
    for name, tensor in target.items():
        if name in source and source[name].shape != tensor.shape:
            return (
                f"{name} is {list(source[name].shape)} in the weights but {list(tensor.shape)} in the model"
            )
    missing = sorted(set(target) - set(source))
    return f"the weights lack {missing[:3]}" if missing else "the module differs"


def _transfer(source: nn.Module, target: nn.Module, prefix: str, report: TransferReport, skip: tuple) -> None:
    source_state, target_state = source.state_dict(), target.state_dict()
    if type(source) is type(target) and _same_shapes(source_state, target_state):
        _copy(source, target, source_state, prefix, report, skip)
    elif isinstance(target, ReparamBlock) and type(source) is Conv:
        _grow(source, target, prefix, report)
    elif _is_container(source) and _is_container(target):
        _transfer_children(source, target, prefix, report, skip)
    elif type(source) is type(target):
        report._leave(prefix, target, _shape_difference(source_state, target_state))
    else:
        report._leave(prefix, target, f"{type(source).__name__} in the weights, {type(target).__name__} here")


def _copy(
    source: nn.Module, target: nn.Module, state: dict, prefix: str, report: TransferReport, skip
) -> None:
    state = {name: tensor for name, tensor in state.items() if not (prefix + name).endswith(skip)}
    target.load_state_dict(state, strict=False)
    for (_, source_bn), (_, target_bn) in zip(_batch_norms(source), _batch_norms(target)):
        target_bn.eps = source_bn.eps  # outside the state dict, and it changes the output
    report.loaded += len(state)
    report.initialized += len(target.state_dict()) - len(state)
    report.used_elements += sum(tensor.numel() for tensor in state.values())


def _grow(source: Conv, target: ReparamBlock, prefix: str, report: TransferReport) -> None:
    try:
        target.check_plain(source)
    except ValueError as error:
        report._leave(prefix, target, str(error))
        return
    target.grow_from_plain(source)
    report.grown += 1
    report.grown_tensors += len(target.state_dict())
    report.used_elements += sum(tensor.numel() for tensor in source.state_dict().values())


def _transfer_children(
    source: nn.Module, target: nn.Module, prefix: str, report: TransferReport, skip
) -> None:
    source_children = dict(source.named_children())
    for name, child in target.named_children():
        if name in source_children:
            _transfer(source_children[name], child, f"{prefix}{name}.", report, skip)
        else:
            report._leave(f"{prefix}{name}.", child, "the weights have no such layer")
    own = dict(target.named_parameters(recurse=False)) | dict(target.named_buffers(recurse=False))
    source_own = dict(source.named_parameters(recurse=False)) | dict(source.named_buffers(recurse=False))
    persistent = target.state_dict(keep_vars=True).keys()  # only what the state dict holds counts
    for name, tensor in own.items():
        if name not in persistent:
            continue
        other = source_own.get(name)
        if other is not None and other.shape == tensor.shape and not (prefix + name).endswith(skip):
            tensor.copy_(other)
            report.loaded += 1
            report.used_elements += other.numel()
        else:
            report.initialized += 1


def _is_container(module: nn.Module) -> bool:
    """Modules whose children carry their weights and may be matched by name; a re-parameterizable block
    is not one (its branches only mean something together)."""
    return not isinstance(module, ReparamBlock) and any(True for _ in module.children())


def _batch_norms(module: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
