"""What every export starts from: a float32 CPU copy of the fused model, and the metadata a loader of any
artefact needs (the formats: utils.deploy.formats)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What a loader of the export needs to know of ``model``: class names, their number, the largest
    stride, and that the weights are the deploy (fused) form."""
    stride = int(model.stride.max())
    return {"names": list(model.names), "nc": int(model.nc), "stride": stride, "deploy": True}


def export_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` on the CPU in eval mode, for an exporter to trace and convert: exporting
    leaves the caller's model (its device, dtype, mode and weights) as it was."""
    return copy.deepcopy(model).float().cpu().eval()
