"""The block registry: YAML module names -> classes. A new block is one file here plus one line below."""

from __future__ import annotations

from models.blocks.acb import ACBlock
from models.blocks.base import Block, BuildContext, make_divisible
from models.blocks.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus, Upsample, make_activation
from models.blocks.dbb import DiverseBranchBlock
from models.blocks.mobileone import MobileOneBlock
from models.blocks.orepa import OREPABlock
from models.blocks.qarepvgg import QARepVGGBlock
from models.blocks.repvgg import ReparamBlock, RepVGGBlock
from models.head import Detect

BLOCKS: dict[str, type] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "SPP": SPP,
    "Focus": Focus,
    "Concat": Concat,
    "Upsample": Upsample,
    "RepVGGBlock": RepVGGBlock,
    "QARepVGGBlock": QARepVGGBlock,
    "ACBlock": ACBlock,
    "MobileOneBlock": MobileOneBlock,
    "DiverseBranchBlock": DiverseBranchBlock,
    "OREPABlock": OREPABlock,
    "Detect": Detect,
}


def fusable_blocks() -> dict[str, type]:
    """Registered blocks that change under re-parameterization, each with example constructor kwargs.

    A block qualifies when it defines `reparameterize` or provides `example_configs()` (composites such
    as C3 whose children fuse). The fusion tests are parametrized over this.
    """
    return {
        name: cls
        for name, cls in BLOCKS.items()
        if callable(getattr(cls, "reparameterize", None)) or _examples(cls)
    }


def _examples(cls: type) -> list[dict]:
    examples = getattr(cls, "example_configs", None)
    return examples() if callable(examples) else []


def block_examples(name: str) -> list[dict]:
    """Constructor kwargs (activation/deploy excluded) for testing block `name`."""
    return _examples(BLOCKS[name])


__all__ = [
    "ACBlock",
    "BLOCKS",
    "Block",
    "BuildContext",
    "C3",
    "SPP",
    "SPPF",
    "Focus",
    "Bottleneck",
    "Concat",
    "Conv",
    "Detect",
    "DiverseBranchBlock",
    "MobileOneBlock",
    "OREPABlock",
    "QARepVGGBlock",
    "ReparamBlock",
    "RepVGGBlock",
    "Upsample",
    "block_examples",
    "fusable_blocks",
    "make_activation",
    "make_divisible",
]
