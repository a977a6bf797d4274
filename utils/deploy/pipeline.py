"""Deployment as steps, each returning what it wrote and how that checked out against PyTorch: fuse and
save (utils.deploy.fuse), then the ONNX graph (write_onnx), the OpenVINO IR (write_openvino), the INT8
models (write_int8) and the edge formats (write_edge). convert.py checks its arguments and wires these
steps; Python code can call them.

Each artefact is written under a temporary name, checked there and only then published under its final name
(utils.deploy.staging), so a refused one is never where val.py, detect.py or serve.py would load it; the steps
after the ONNX graph read the published graph. No step changes the caller's model: the exporters convert a
float32 CPU copy of it (utils.deploy.export.export_copy)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from utils.deploy.backend import load_inference_model
from utils.deploy.export import export_copy, export_onnx, export_openvino, model_metadata
from utils.deploy.graph import decode_tail_nodes
from utils.deploy.metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    int8_onnx_path,
    openvino_folder,
    openvino_xml_path,
    read_metadata,
    write_folder_metadata,
)
from utils.deploy.partial_quantization import (
    AccuracyTarget,
    BoundedResult,
    map_scorer,
    quantize_onnx_within,
    quantize_openvino_within,
)
from utils.deploy.quantize import quantize_onnx, quantize_openvino
from utils.deploy.staging import Release, staged_base
from utils.deploy.verify import (
    MAX_ONNX_RELATIVE_ERROR,
    OnnxCheck,
    RuntimeCheck,
    check_onnx,
    compare_with_model,
)
from utils.errors import ConversionError
from utils.evaluation.loader import validation_loader

LOGGER = logging.getLogger(__name__)

INT8_NOTE = (
    "  (INT8: deviations this large are expected, 8-bit activations move box coordinates by pixels; "
    "what judges an INT8 model is its mAP, as val.py measures it on that file)"
)


@dataclass
class OnnxSettings:
    """How the ONNX graph is exported and timed."""

    opset: int = 17
    dynamic: bool = False  # free batch, height and width; else exactly (1, 3, H, W)
    runs: int = 10  # timed calls per runtime for the latency row
    threads: int = 0  # CPU threads while timing (0: each runtime's default)


@dataclass
class Int8Plan:
    """What the INT8 models are calibrated on and, with ``max_drop``, the accuracy they must keep: their
    mAP50-95 on the val split of the dataset config ``validation`` within ``max_drop`` points of the float
    model's (layers are kept float until it holds)."""

    calibration: list[str]  # image files
    validation: dict | None = None
    max_drop: float | None = None


@dataclass
class QuantizationResult:
    """The INT8 models' checks against PyTorch and, with a max_drop, what each runtime's search kept float
    ({"onnx" | "openvino": BoundedResult})."""

    checks: list[RuntimeCheck]
    bounded: dict[str, BoundedResult] = field(default_factory=dict)

    def describe(self) -> str:
        return "\n".join([*(check.describe() for check in self.checks), INT8_NOTE])


def write_onnx(
    model: nn.Module, path: Path, images: torch.Tensor, settings: OnnxSettings, release: Release | None = None
) -> OnnxCheck:
    """Export the fused ``model`` at the size of ``images``, check it (check_onnx) and publish it as ``path``
    (through ``release``: see utils.deploy.staging)."""
    release = release or Release()
    img_hw = tuple(images.shape[-2:])
    with release.staged(path) as staged:
        export_onnx(model, staged, img_hw, settings.opset, settings.dynamic, model_metadata(model))
        return check_onnx(model, staged, images, settings.runs, settings.threads, path)


def write_openvino(
    model: nn.Module, onnx_path: Path, images: torch.Tensor, release: Release | None = None
) -> RuntimeCheck:
    """The OpenVINO IR of the published ONNX export ``onnx_path``, checked against ``model`` and published as
    openvino_folder(onnx_path), its .xml at openvino_xml_path(onnx_path)."""
    release = release or Release()
    folder = openvino_folder(onnx_path)
    with release.staged(folder) as staged:
        export_openvino(onnx_path, staged / openvino_xml_path(onnx_path).name)
        return compare_with_model(model, staged, images, MAX_ONNX_RELATIVE_ERROR, folder)


def write_int8(
    model: nn.Module,
    onnx_path: Path,
    images: torch.Tensor,
    plan: Int8Plan,
    openvino: bool,
    release: Release | None = None,
) -> QuantizationResult:
    """The INT8 ONNX model beside ``onnx_path`` (int8_onnx_path) and, with ``openvino``, the INT8 IR of
    the FP32 IR that write_openvino published, each checked against ``model`` on ``images`` and then
    published; the head stays float (see utils.deploy.quantize)."""
    release = release or Release()
    fp32 = onnx.load(str(onnx_path))
    kept = decode_tail_nodes(fp32)
    files = plan.calibration
    LOGGER.info("INT8: calibrated on %d images; the head stays float: %s", len(files), head(fp32, kept))
    img_size = int(images.shape[-1])
    target = None
    if plan.validation is not None:
        target = accuracy_target(onnx_path, plan.validation, img_size, plan.max_drop)
    int8_onnx = int8_onnx_path(onnx_path)
    result = QuantizationResult([])
    with release.staged(int8_onnx) as staged:
        if target is None:
            quantize_onnx(onnx_path, staged, files, img_size)
        else:
            result.bounded["onnx"] = quantize_onnx_within(onnx_path, staged, files, img_size, target)
            LOGGER.info(result.bounded["onnx"].describe())
        result.checks.append(compare_with_model(model, staged, images, None, int8_onnx))
    if not openvino:
        return result
    folder = openvino_folder(int8_onnx)
    metadata = read_metadata(fp32)  # the INT8 graph carries the FP32 file's metadata (quantize_onnx)
    with release.staged(folder) as staged:
        int8_xml = staged / openvino_xml_path(int8_onnx).name
        if target is None:
            quantize_openvino(openvino_xml_path(onnx_path), int8_xml, files, img_size, kept)
        else:
            result.bounded["openvino"] = quantize_openvino_within(
                openvino_xml_path(onnx_path), int8_xml, files, img_size, kept, target, metadata
            )
            LOGGER.info(result.bounded["openvino"].describe())
        write_folder_metadata(staged, metadata)
        result.checks.append(compare_with_model(model, staged, images, None, folder))
    return result


def head(onnx_model: onnx.ModelProto, kept: list[str]) -> str:
    """The nodes ``kept`` float, in words: 'its 3 output convolutions and the 139 nodes of the box decode
    after them'."""
    op_types = {node.name: node.op_type for node in onnx_model.graph.node}
    convs = sum(op_types[name] == "Conv" for name in kept)
    return f"its {convs} output convolutions and the {len(kept) - convs} nodes of the box decode after them"


def accuracy_target(onnx_path: Path, data_config: dict, img_size: int, max_drop: float) -> AccuracyTarget:
    """mAP50-95 within ``max_drop`` points on the val split of ``data_config``, loaded as val.py loads it
    for the ONNX graph ``onnx_path`` (square letterboxes for a static graph)."""
    predictor = load_inference_model(onnx_path)
    batches = list(validation_loader(data_config, "val", img_size, 32, 0, predictor))
    return AccuracyTarget(batches, map_scorer(list(data_config["names"])), max_drop)


# --- the edge formats (utils.deploy.edge) -------------------------------------------------------------

# float16 weights round each weight to 11 significant bits, which moves the outputs by up to 2e-3 of the
# largest one on our models (the plain ReLU repyolov5s at 320); a broken conversion is far above this
MAX_FLOAT16_RELATIVE_ERROR = 1e-2


@dataclass
class SpecCheck:
    """What is checked of an artefact that cannot run here (CoreML off macOS): its declared input and
    output and its convolution count against the fused model's."""

    path: str
    kind: str
    inputs: dict[str, list[int]]
    outputs: list[str]
    convolutions: int
    ops: int

    def describe(self) -> str:
        inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in self.inputs.items())
        return (
            f"{self.kind} {self.path}: spec checked (input {inputs}, output {', '.join(self.outputs)}, "
            f"{self.convolutions} convolutions as the fused model, {self.ops} ops); not scored here: "
            "Core ML predicts only on macOS"
        )


@dataclass
class EdgeResult:
    """The edge artefacts' checks (RuntimeCheck, or SpecCheck for CoreML) and, with --max-drop, each INT8
    artefact's mAP50-95 against the FP32 ONNX graph at the same input ({artefact path: BoundedResult})."""

    checks: list = field(default_factory=list)
    bounded: dict[str, BoundedResult] = field(default_factory=dict)
    int8: bool = False  # an INT8 artefact was written

    def describe(self) -> str:
        lines = [check.describe() for check in self.checks]
        lines += [result.describe() for result in self.bounded.values()]
        return "\n".join(lines + [INT8_NOTE] * self.int8)


def edge_inputs(
    model: nn.Module,
    images: torch.Tensor,
    onnx_path: Path | None,
    plan: Int8Plan | None,
    kept: list[str] = (),
):
    """What the edge writers get (utils.deploy.edge.EdgeInputs): a float32 CPU copy of the fused model in eval
    mode (export_copy: the writers trace, export and quantize it, and the checks still compare against the
    caller's model where it is), one image as the example input, the metadata the ONNX graph carries, with
    ``plan`` its calibration images, and the convolutions ``kept`` float (ONNX node names: what ONNX
    Runtime's --max-drop search kept float)."""
    from utils.deploy.edge import EdgeInputs, module_of_onnx_node
    from utils.deploy.quantize import calibration_batches

    model = export_copy(model)
    example = images[:1].cpu()
    img_hw = list(example.shape[-2:])
    metadata = model_metadata(model) | {"dynamic": False, "img_size": img_hw}
    calibration = None
    if plan is not None:
        files = plan.calibration

        def calibration():
            return (torch.from_numpy(batch) for batch in calibration_batches(files, img_hw[-1]))

    float_modules = tuple(module_of_onnx_node(name) for name in kept)
    return EdgeInputs(model, example, metadata, calibration, onnx_path, float_modules)


def write_edge(
    model: nn.Module,
    base: Path,
    images: torch.Tensor,
    flags: list[str],
    onnx_path: Path | None,
    plan,
    kept=(),
    release: Release | None = None,
) -> EdgeResult:
    """Write the edge formats ``flags`` (keys of utils.deploy.edge.EDGE_FORMATS) of the fused ``model``
    beside ``base`` (the fused checkpoint without its suffix), check each against ``model`` on ``images``
    (check_edge; INT8 also by its mAP50-95 when ``plan`` has a max_drop, against the published FP32 ONNX
    graph ``onnx_path``, with the convolutions ``kept`` float that ONNX Runtime's search kept float: their
    ONNX node names), and publish each once it passed. A writer writes all of its format's artefacts at
    once, under a temporary base; they are checked and published one by one."""
    from utils.deploy.edge import EDGE_FORMATS, WRITERS, quiet_native_output

    release = release or Release()
    inputs = edge_inputs(model, images, onnx_path, plan, list(kept))
    result = EdgeResult()
    target = None
    if plan is not None and plan.validation is not None:
        target = accuracy_target(onnx_path, plan.validation, int(images.shape[-1]), plan.max_drop)
        reference = target.score(load_inference_model(onnx_path), target.batches)
    for flag in flags:
        LOGGER.info("Writing %s ...", EDGE_FORMATS[flag].title)
        with staged_base(base) as temporary:
            with quiet_native_output():
                artefacts = WRITERS[flag](inputs, temporary)
            for written in artefacts:
                final = base.with_name(base.name + written.path.name.removeprefix(temporary.name))
                with release.staged(final, written.path):
                    result.checks.append(check_edge(model, flag, written, images, final))
                    if written.precision == "int8" and target is not None:
                        bounded = bounded_edge_int8(written.path, final, target, reference, list(kept))
                        result.bounded[str(final)] = bounded
                result.int8 |= written.precision == "int8"
    return result


def check_edge(model: nn.Module, flag: str, written, images: torch.Tensor, final: Path):
    """The check of an edge artefact ``written`` (utils.deploy.edge.Written, under its temporary name;
    ``final``: its final path) against ``model``: CoreML's spec (check_coreml_spec); FP32 within
    MAX_ONNX_RELATIVE_ERROR, FP16 within MAX_FLOAT16_RELATIVE_ERROR, INT8 measured only (its mAP judges
    it)."""
    if flag == "coreml":
        return check_coreml_spec(model, written.path, final)
    limits = {"float32": MAX_ONNX_RELATIVE_ERROR, "float16": MAX_FLOAT16_RELATIVE_ERROR}
    return compare_with_model(model, written.path, images, limits.get(written.precision), final)


def bounded_edge_int8(
    path: Path, final: Path, target: AccuracyTarget, reference: float, kept: list[str]
) -> BoundedResult:
    """The INT8 artefact's mAP50-95 (``path``, to be published as ``final``) on the target's batches against
    the FP32 ONNX graph's (``reference``); ConversionError when the drop is over the bound (the layer search
    is ONNX Runtime's: its choice of float convolutions is applied here, not searched again)."""
    score = target.score(load_inference_model(path), target.batches)
    label = f"{final.name} (against the FP32 ONNX graph)"
    result = BoundedResult(label, target.max_drop, reference, score, kept)
    if result.drop > target.max_drop:
        raise ConversionError(
            f"{final} scores mAP50-95 {score:.2f}, {result.drop:.2f} points under the FP32 ONNX graph's "
            f"{reference:.2f} at the same input, over --max-drop {target.max_drop:g} with the convolutions "
            "ONNX Runtime's search kept float also float here; deploy its float artefact or the ONNX "
            "Runtime or OpenVINO INT8 model."
        )
    return result


def check_coreml_spec(model: nn.Module, path: Path, name: Path | None = None) -> SpecCheck:
    """Read back the written ML Program's spec: one input 'images' of the example's shape, one output,
    as many convolutions as the fused model has. ConversionError when it is not so. name: as
    compare_with_model's."""
    from utils.deploy.edge import import_coremltools

    name = name or path
    spec = import_coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    ops = [op.type for function in spec.mlProgram.functions.values()
           for block in function.block_specializations.values() for op in block.operations]  # fmt: skip
    convolutions = sum(op == "conv" for op in ops)
    expected = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if list(inputs) != [INPUT_NAME] or outputs != [OUTPUT_NAME] or convolutions != expected:
        raise ConversionError(
            f"{name} declares inputs {list(inputs)}, outputs {outputs} and {convolutions} convolutions, not "
            f"'{INPUT_NAME}', '{OUTPUT_NAME}' and the fused model's {expected}; report the model's config."
        )
    return SpecCheck(str(name), "coreml", inputs, outputs, convolutions, sum(op != "const" for op in ops))
