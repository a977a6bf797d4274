"""INT8 by PyTorch's PT2E post-training quantization, for the formats that lower a torch.export graph
(LiteRT, ExecuTorch): the trunk (everything before the Detect layer) quantized with each runtime's own
quantizer (static, per-channel weights), calibrated on the same images as the other INT8 paths; the Detect
layer's 1x1 convs and the box decode stay float, so boxes in pixels and scores in 0..1 never share one 8-bit
scale."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from utils.errors import ConversionError


class Trunk(nn.Module):
    """The detector up to the Detect layer's inputs: what PT2E quantizes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.forward_features(x))


class QuantizedDetector(nn.Module):
    """A quantized trunk (a PT2E GraphModule) followed by the float Detect layer: the 1x1 prediction
    convs and the box decode."""

    def __init__(self, trunk: nn.Module, detect: nn.Module) -> None:
        super().__init__()
        self.trunk, self.detect = trunk, detect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(list(self.trunk(x)))

    def train(self, mode: bool = True) -> QuantizedDetector:
        """Only the Detect layer has a mode (train: raw outputs); an exported GraphModule refuses train()."""
        self.training = mode
        self.detect.train(mode)
        return self


def quantized_trunk(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Callable[[], Iterable[torch.Tensor]],
    quantizer,
    float_modules: tuple[str, ...] = (),
    fold_quantize: bool = True,
) -> QuantizedDetector:
    """Quantize the trunk of ``model`` (traced on ``example``) with a PT2E ``quantizer`` (static,
    per-channel weights), activation ranges observed on the ``calibration`` images; the modules in
    ``float_modules`` (paths in the model, e.g. "model.0") stay float. fold_quantize: weights stored as int8
    (ExecuTorch's lowering wants that) or as float with their quantize op (LiteRT's)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = model.eval()
    with torch.no_grad():
        graph = torch.export.export(Trunk(model), (example,)).module()
        keep = tuple(f"model.{path}" for path in float_modules)  # under Trunk
        prepared = prepare_pt2e(graph, keeping_float(quantizer, keep))
        images = 0
        for image in calibration():
            prepared(image)
            images += 1
        if not images:
            raise ConversionError("INT8 calibration read none of its images; pass others with --calib-data.")
        trunk = convert_pt2e(prepared, fold_quantize=fold_quantize)
    return QuantizedDetector(trunk, model.detect)


def keeping_float(quantizer, modules: tuple[str, ...]):
    """``quantizer`` with its annotations undone on the nodes that run inside ``modules`` (qualified
    names in the exported graph), so those stay float. The quantizers' own set_module_name filters parse
    the module stack in a form torch no longer writes, and cannot say "none"."""
    if not modules:
        return quantizer
    annotate = quantizer.annotate

    def inside(node) -> bool:
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return any(path == name or path.startswith(f"{name}.") for path in paths for name in modules)

    def annotate_except(graph_module):
        graph_module = annotate(graph_module)
        for node in graph_module.graph.nodes:
            if inside(node):
                node.meta.pop("quantization_annotation", None)
        return graph_module

    quantizer.annotate = annotate_except
    return quantizer
