"""What every registered block shares: how one YAML row `[from, number, module, args]` becomes a module.

A block class owns its channel arithmetic through `from_yaml`, so the graph parser in models/yolo.py
needs no list of special classes: adding a block is one file plus one line in the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` up to a multiple of `divisor` (channel counts after width scaling)."""
    return int(math.ceil(value / divisor) * divisor)


@dataclass(frozen=True)
class BuildContext:
    """Model-wide settings a block needs while it is built from a YAML row."""

    width_multiple: float = 1.0
    activation: str = "SiLU"
    deploy: bool = False
    registry: Mapping[str, type] = field(default_factory=dict)

    def scale_channels(self, channels: int) -> int:
        return make_divisible(channels * self.width_multiple, 8)

    def lookup(self, name: str) -> type:
        """The registered class called `name`; ValueError listing the known names otherwise."""
        if name not in self.registry:
            known = ", ".join(sorted(self.registry))
            raise ValueError(f"unknown module '{name}'; known modules: {known}")
        return self.registry[name]


class Block(nn.Module):
    """Base class of the registered blocks that map one input to `out_channels` channels.

    YAML protocol (classmethods, overridable): `from_yaml(in_channels, args, repeats, context)` returns
    `(module, out_channels)`. The default reads `args[0]` as the output channels before width scaling,
    passes the remaining args positionally, and either stacks `repeats` copies in an nn.Sequential or,
    when `repeats_as_argument` is set (C3), passes `repeats` as the third constructor argument.
    Constructors take `activation: str` and `deploy: bool` keywords.
    """

    repeats_as_argument: ClassVar[bool] = False

    @classmethod
    def yaml_args(cls, args: list[Any], context: BuildContext) -> list[Any]:
        """Turn the YAML args after the output channels into constructor args (e.g. resolve names)."""
        return list(args)

    @classmethod
    def from_yaml(
        cls, in_channels: list[int], args: list[Any], repeats: int, context: BuildContext
    ) -> tuple[nn.Module, int]:
        if len(in_channels) != 1:
            raise ValueError(f"{cls.__name__} takes one input, but the row names {len(in_channels)}")
        if not args or not isinstance(args[0], int):
            raise ValueError(f"{cls.__name__} needs the output channel count as its first argument")
        out_channels = context.scale_channels(args[0])
        extra = cls.yaml_args(list(args[1:]), context)
        options = {"activation": context.activation, "deploy": context.deploy}
        if cls.repeats_as_argument:
            return cls(in_channels[0], out_channels, repeats, *extra, **options), out_channels
        modules = [
            cls(in_channels[0] if index == 0 else out_channels, out_channels, *extra, **options)
            for index in range(repeats)
        ]
        return (modules[0] if repeats == 1 else nn.Sequential(*modules)), out_channels

    @classmethod
    def example_configs(cls) -> list[dict[str, Any]]:
        """Constructor kwargs (without activation/deploy) used by the fusion tests; [] if nothing to fuse."""
        return []
