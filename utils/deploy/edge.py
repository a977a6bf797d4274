"""The edge formats beside ONNX and OpenVINO, yolov5's names for each, written from the fused model:

| flag            | artefacts (from best_fused.pt)                       | through                          |
| --------------- | ---------------------------------------------------- | -------------------------------- |
| --torchscript   | best_fused.torchscript                               | torch.jit.trace                  |
| --ncnn          | best_fused_ncnn_model/ (model.ncnn.param, .bin)      | pnnx, from the traced model      |
| --tflite        | best_fused.tflite, _float16.tflite, (--int8) _int8   | litert-torch, ai-edge-quantizer  |
| --executorch    | best_fused.pte, (--int8) best_fused_int8.pte         | executorch, XNNPACK delegate     |
| --mnn           | best_fused.mnn                                       | MNN's converter, from the ONNX   |
| --coreml        | best_fused.mlpackage (FP32 ML Program)               | coremltools                      |

Each artefact carries the class names, stride and input size (utils.deploy.metadata) and takes a static
(1, 3, H, W) float input, RGB 0..1, and gives the decoded (1, N, 5 + nc) float output, as the ONNX graph.

INT8 (TFLite, ExecuTorch) is PT2E post-training quantization of the trunk (everything before the Detect
layer), calibrated on the same images as the other INT8 paths; the Detect layer's 1x1 convs and the box
decode stay float, so boxes in pixels and scores in 0..1 never share one 8-bit scale.

Each converter is optional (requirements-edge.txt) and imported only when its flag is used. A writer
writes its artefacts where it is told, at once; utils.deploy.pipeline.write_edge tells it a temporary base
(utils.deploy.staging) and publishes each artefact under its final name once it passed its check.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from utils.deploy.metadata import (
    INPUT_NAME,
    NCNN_PARAM,
    NCNN_WEIGHTS,
    OUTPUT_NAME,
    with_zip_metadata,
    write_folder_metadata,
)
from utils.errors import ConversionError

LOGGER = logging.getLogger(__name__)

EDGE_REQUIREMENTS = "requirements-edge.txt"


@dataclass(frozen=True)
class EdgeFormat:
    """One export format: its convert.py flag, what it needs installed and where its files go.

    packages: (pip name, import name) of each converter and runtime the format needs.
    suffix: the artefact's name after the fused checkpoint's stem ("_ncnn_model" is a folder).
    int8_suffix: the INT8 artefact's, for formats that write one with --int8.
    """

    flag: str
    title: str
    packages: tuple[tuple[str, str], ...]
    suffix: str
    extra_suffixes: tuple[str, ...] = ()  # further float artefacts (TFLite's float16)
    int8_suffix: str | None = None

    def path(self, base: Path, suffix: str | None = None) -> Path:
        """The artefact of ``base`` (the fused checkpoint without its suffix, e.g. runs/.../best_fused)."""
        return base.with_name(base.name + (suffix or self.suffix))

    def artefacts(self, base: Path, int8: bool = False) -> list[Path]:
        """Every artefact this format writes from ``base``, with ``int8`` its INT8 one too, in the order its
        writer returns them."""
        int8_suffixes = [self.int8_suffix] if int8 and self.int8_suffix else []
        return [self.path(base, suffix) for suffix in (self.suffix, *self.extra_suffixes, *int8_suffixes)]

    def missing(self) -> list[str]:
        """The pip names of the packages this format needs that are not installed."""
        return [pip for pip, module in self.packages if importlib.util.find_spec(module) is None]

    def require(self) -> None:
        """Raises ConversionError (one sentence) when a package this format needs is not installed."""
        missing = self.missing()
        if missing:
            raise ConversionError(
                f"--{self.flag} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                f"not installed; pip install -r {EDGE_REQUIREMENTS} (or drop --{self.flag})."
            )


TORCHSCRIPT_FORMAT = EdgeFormat("torchscript", "TorchScript", (), ".torchscript")
NCNN_FORMAT = EdgeFormat("ncnn", "NCNN", (("pnnx", "pnnx"), ("ncnn", "ncnn")), "_ncnn_model")
TFLITE_FORMAT = EdgeFormat(
    "tflite", "LiteRT (TFLite)",
    (("litert-torch", "litert_torch"), ("ai-edge-litert", "ai_edge_litert"),
     ("ai-edge-quantizer", "ai_edge_quantizer")),
    ".tflite", ("_float16.tflite",), "_int8.tflite",
)  # fmt: skip
EXECUTORCH_FORMAT = EdgeFormat(
    "executorch", "ExecuTorch", (("executorch", "executorch"),), ".pte", int8_suffix="_int8.pte"
)
MNN_FORMAT = EdgeFormat("mnn", "MNN", (("MNN", "MNN"),), ".mnn")
COREML_FORMAT = EdgeFormat("coreml", "CoreML", (("coremltools", "coremltools"),), ".mlpackage")
EDGE_FORMATS = {
    f.flag: f
    for f in (TORCHSCRIPT_FORMAT, NCNN_FORMAT, TFLITE_FORMAT, EXECUTORCH_FORMAT, MNN_FORMAT, COREML_FORMAT)
}


@dataclass
class Written:
    """An artefact just written and the precision it computes in ("float32", "float16", "int8")."""

    path: Path
    precision: str


@dataclass
class EdgeInputs:
    """What every edge writer gets: the fused model (a float32 CPU copy in eval mode, which the writers may
    change: utils.deploy.export.export_copy), an example input (1, 3, H, W), the metadata to carry, the
    calibration images for INT8 (None: no INT8 artefact) and the ONNX export (MNN converts from it)."""

    model: nn.Module
    example: torch.Tensor
    metadata: dict
    calibration: Callable[[], Iterable[torch.Tensor]] | None = None
    onnx_path: Path | None = None
    float_modules: tuple[str, ...] = ()  # modules INT8 keeps float, e.g. "model.4.conv" (module_of_onnx_node)


# --- running the converters ---------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_native_output():
    """Silence what converters print on file descriptors 1 and 2 (progress bars, pass lists, native
    logs) unless debugging; their failures still reach us as exceptions."""
    if LOGGER.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def import_quietly(module: str, *loggers: str):
    """Import ``module`` with the warnings its import logs on ``loggers`` held back: coremltools' about the
    scikit-learn and torch versions it was tested with and the native libraries it has only on macOS (it
    converts and reads specs without them), torch's about an Enum that torchao registers (ExecuTorch)."""
    held = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in held]
    for logger in held:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    finally:
        for logger, level in zip(held, levels):
            logger.setLevel(level)


def import_coremltools():
    return import_quietly("coremltools", "coremltools")


def import_executorch_runtime():
    return import_quietly("executorch.runtime", "torch.utils._pytree")


def traced(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The TorchScript trace of ``model`` on ``example`` (without torch's re-trace check, which the Detect
    layer's grid cache fails and the artefact's own check against PyTorch replaces; torch's warnings
    that tracing is deprecated and that the grid size is fixed, as the export is, silenced)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), example, strict=False, check_trace=False)


# --- the writers --------------------------------------------------------------------------------------


def write_torchscript(inputs: EdgeInputs, base: Path) -> list[Written]:
    """The traced model with the metadata as an extra file (yolov5's config.txt)."""
    path = TORCHSCRIPT_FORMAT.path(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save is deprecated
        torch.jit.save(
            traced(inputs.model, inputs.example), str(path), _extra_files=metadata_files(inputs.metadata)
        )
    return [Written(path, "float32")]


def metadata_files(metadata: dict) -> dict[str, str]:
    return {"config.txt": json.dumps(metadata)}


def write_ncnn(inputs: EdgeInputs, base: Path) -> list[Written]:
    """pnnx converts the traced model; the folder keeps NCNN's param and bin and metadata.yaml."""
    import pnnx

    folder = NCNN_FORMAT.path(base)
    shape = list(inputs.example.shape)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        traced_file = Path(work).resolve() / "model.pt"  # pnnx runs in ``work``: an absolute path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced(inputs.model, inputs.example).save(str(traced_file))
        # fp16=0: FP32 weights in the .bin (pnnx stores float16 by default)
        input_shape = "inputshape=[" + ",".join(map(str, shape)) + "]"
        command = [pnnx.EXEC_PATH, str(traced_file), input_shape, "fp16=0"]
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        produced = [Path(work) / f"model{suffix}" for suffix in (".ncnn.param", ".ncnn.bin")]
        if result.returncode != 0 or not all(p.is_file() for p in produced):
            LOGGER.debug("pnnx said:\n%s\n%s", result.stdout, result.stderr)
            raise ConversionError(
                f"pnnx could not convert the model to NCNN (exit {result.returncode}: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}); report the model's config."
            )
        produced[0].replace(folder / NCNN_PARAM)
        produced[1].replace(folder / NCNN_WEIGHTS)
    write_folder_metadata(folder, inputs.metadata)
    return [Written(folder, "float32")]


def write_mnn(inputs: EdgeInputs, base: Path) -> list[Written]:
    """MNN's converter (its C++ entry point: the mnnconvert script also sends usage logs over the
    network and pip-installs a logging SDK) from the ONNX export; the metadata rides in the bizCode."""
    import _tools as mnn_tools  # MNN's compiled converter (the MNN package installs it top-level)

    path = MNN_FORMAT.path(base)
    if inputs.onnx_path is None:
        raise ConversionError("--mnn converts the ONNX export; it needs --onnx.")
    biz_code = json.dumps(inputs.metadata, separators=(",", ":"))
    arguments = ["mnnconvert", "-f", "ONNX", "--modelFile", str(inputs.onnx_path),
                 "--MNNModel", str(path), "--bizCode", biz_code]  # fmt: skip
    mnn_tools.mnnconvert(arguments)
    if not path.is_file():
        raise ConversionError(f"MNN's converter wrote no model from {inputs.onnx_path}; report it.")
    return [Written(path, "float32")]


def write_coreml(inputs: EdgeInputs, base: Path) -> list[Written]:
    """An FP32 ML Program from the traced model, the metadata in its user-defined metadata."""
    ct = import_coremltools()
    path = COREML_FORMAT.path(base)
    mlmodel = ct.convert(
        traced(inputs.model, inputs.example),
        inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(inputs.example.shape))],
        outputs=[ct.TensorType(name=OUTPUT_NAME)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS15,
    )
    for key, value in inputs.metadata.items():
        mlmodel.user_defined_metadata[key] = value if isinstance(value, str) else json.dumps(value)
    mlmodel.save(str(path))
    return [Written(path, "float32")]


def write_tflite(inputs: EdgeInputs, base: Path) -> list[Written]:
    """LiteRT FP32 (litert-torch), FP16 weights (ai-edge-quantizer's float casting of the FP32 model) and
    with calibration INT8 (PT2E, see quantized_trunk); each with the metadata appended as a zip."""
    import litert_torch

    fp32 = litert_torch.convert(inputs.model.eval(), (inputs.example,)).model_content()
    contents = {"float32": fp32, "float16": tflite_float16(fp32)}
    if inputs.calibration is not None:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        # the first layer stays float: LiteRT's converter would make the graph's input itself INT8
        composite = quantized_trunk(inputs, quantizer, float_modules=("model.0",), fold_quantize=False)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
        contents["int8"] = litert_torch.convert(
            composite, (inputs.example,), quant_config=quant_config
        ).model_content()
    suffixes = {
        "float32": None,
        "float16": TFLITE_FORMAT.extra_suffixes[0],
        "int8": TFLITE_FORMAT.int8_suffix,
    }
    return [write_with_metadata(TFLITE_FORMAT.path(base, suffixes[precision]), content, precision, inputs)
            for precision, content in contents.items()]  # fmt: skip


def write_with_metadata(path: Path, content: bytes, precision: str, inputs: EdgeInputs) -> Written:
    """A .tflite or .pte file: the model, then its metadata (and precision) as a zip, in one write."""
    path.write_bytes(with_zip_metadata(content, inputs.metadata | {"precision": precision}))
    return Written(path, precision)


def tflite_float16(fp32: bytes) -> bytes:
    """The FP32 LiteRT model with float16 weights (dequantized to float32 when loaded, as TFLite's
    float16 quantization)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    casting = quantizer.Quantizer(bytearray(fp32))
    casting.add_weight_only_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )  # fmt: skip
    return bytes(casting.quantize().quantized_model)


def write_executorch(inputs: EdgeInputs, base: Path) -> list[Written]:
    """An ExecuTorch program lowered to the XNNPACK delegate, FP32 and with calibration INT8 (PT2E with
    the XNNPACK quantizer, see quantized_trunk); the metadata appended as a zip."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    fp32 = executorch_program(inputs.model, inputs.example)
    written = [write_with_metadata(EXECUTORCH_FORMAT.path(base), fp32, "float32", inputs)]
    if inputs.calibration is not None:
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        int8 = executorch_program(quantized_trunk(inputs, quantizer), inputs.example)
        path = EXECUTORCH_FORMAT.path(base, EXECUTORCH_FORMAT.int8_suffix)
        written.append(write_with_metadata(path, int8, "int8", inputs))
    return written


def executorch_program(model: nn.Module, example: torch.Tensor) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(model.eval(), (example,))
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return program.buffer


WRITERS: dict[str, Callable[[EdgeInputs, Path], list[Written]]] = {
    "torchscript": write_torchscript,
    "ncnn": write_ncnn,
    "tflite": write_tflite,
    "executorch": write_executorch,
    "mnn": write_mnn,
    "coreml": write_coreml,
}


# --- INT8 by PT2E: a quantized trunk under a float head ------------------------------------------------


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
    inputs: EdgeInputs, quantizer, float_modules: tuple[str, ...] = (), fold_quantize: bool = True
) -> QuantizedDetector:
    """Quantize the trunk of ``inputs.model`` with a PT2E ``quantizer`` (static, per-channel weights),
    activation ranges observed on the calibration images; the modules in ``float_modules`` and
    ``inputs.float_modules`` (paths in the model, e.g. "model.0") stay float. fold_quantize: weights stored
    as int8 (ExecuTorch's lowering wants that) or as float with their quantize op (LiteRT's)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = inputs.model.eval()
    with torch.no_grad():
        graph = torch.export.export(Trunk(model), (inputs.example,)).module()
        keep = tuple(f"model.{path}" for path in (*float_modules, *inputs.float_modules))  # under Trunk
        prepared = prepare_pt2e(graph, keeping_float(quantizer, keep))
        images = 0
        for image in inputs.calibration():
            prepared(image)
            images += 1
        if not images:
            raise ConversionError("INT8 calibration read none of its images; pass others with --calib-data.")
        trunk = convert_pt2e(prepared, fold_quantize=fold_quantize)
    return QuantizedDetector(trunk, model.detect)


def module_of_onnx_node(name: str) -> str:
    """The module path of a node of our ONNX export: "/model.2/bottlenecks/bottlenecks.0/reduce/conv/Conv"
    -> "model.2.bottlenecks.0.reduce.conv" (the exporter names a container's child by its qualified name
    within the container, after the container itself)."""
    parts: list[str] = []
    for scope in name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(f"{parts[-1]}."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


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
