"""OpenVINO: an IR converted from the published ONNX graph (``convert.py --openvino``:
best_fused_openvino_model/ with best_fused.xml, .bin and metadata.yaml), and with --int8 NNCF's INT8 of it
(best_fused_int8_openvino_model/, utils.deploy.int8.nncf_openvino); compiled for the CPU, in bfloat16 with
--half where the CPU computes it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from utils.deploy.formats.base import DEPLOY_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.deploy.graph import decode_tail_nodes
from utils.deploy.int8.nncf_openvino import Runtime, quantize_openvino, quantize_openvino_within
from utils.deploy.metadata import read_folder_metadata, read_metadata, write_folder_metadata
from utils.device import half_dtype
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel

LOGGER = logging.getLogger(__name__)


class OpenVINOInferenceModel(ArrayInferenceModel):
    """An OpenVINO IR (a folder with the .xml, .bin and metadata.yaml that OpenVINOFormat writes, or its
    .xml), compiled for the CPU."""

    kind = "openvino"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> None:
        import openvino as ov

        xml = openvino_xml(path)
        half_precision = half_dtype(torch.device("cpu")) if half else None  # OpenVINO runs on the CPU
        metadata = read_folder_metadata(xml.parent, xml.name, "--openvino")
        with FORMAT.refusing(xml):  # OpenVINO raises RuntimeError for unreadable IR
            core = ov.Core()
            network = core.read_model(str(xml))
            compiled = core.compile_model(network, "CPU", openvino_cpu_config(threads, half))
        self._attach(compiled, metadata, device, xml)
        self.half_precision = half_precision
        self.int8 = any(op.get_type_name() == "FakeQuantize" for op in network.get_ops())  # NNCF's INT8

    @classmethod
    def from_compiled(
        cls, compiled, metadata: dict, device: torch.device, name: str
    ) -> OpenVINOInferenceModel:
        """Wrap an already compiled OpenVINO model (NNCF's accuracy control hands out such models) with
        the export ``metadata`` (names, stride) of the IR it came from; ``name`` stands for its path."""
        self = cls.__new__(cls)
        self._attach(compiled, metadata, device, Path(name))
        return self

    def _attach(self, compiled, metadata: dict, device: torch.device, path: Path) -> None:
        dims = compiled.inputs[0].get_partial_shape()
        shape = [dim.get_length() if dim.is_static else None for dim in dims]
        super().__init__(path, metadata, device, shape)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.request.infer({0: array})[self.compiled.output(0)].copy()


def openvino_cpu_config(threads: int = 0, half: bool = False) -> dict:
    """OpenVINO CPU compile settings: f32 precision (the CPU plugin would otherwise pick bf16 where the
    processor has it, off by ~1e-3 from PyTorch), or bf16 with ``half``, and ``threads`` inference
    threads (0: its default)."""
    config = {"INFERENCE_PRECISION_HINT": "bf16" if half else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_xml(path: Path) -> Path:
    """The .xml of an IR given as its folder or as the .xml itself."""
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if len(found) != 1:
            raise WeightsError(
                f"{path} should hold exactly one OpenVINO .xml, not {len(found)}; pass the .xml."
            )
        return found[0]
    return path


def export_openvino(onnx_path: Path, xml: Path) -> Path:
    """Convert an ONNX export to an OpenVINO IR (FP32 weights) at ``xml``, with the ONNX file's metadata
    (names, stride, input size) as metadata.yaml beside the .xml."""
    import onnx
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    write_folder_metadata(xml.parent, read_metadata(onnx.load(str(onnx_path), load_external_data=False)))
    return xml


def cpu_runtime(metadata: dict) -> Runtime:
    """The predictor of an IR's .xml (compiled as the loader compiles it), or of a model NNCF compiled, with
    the export ``metadata`` (names, stride) of the IR being quantized."""

    def runtime(source: Any) -> InferenceModel:
        name = str(source) if isinstance(source, Path) else "an NNCF candidate"
        if isinstance(source, Path):
            import openvino as ov

            core = ov.Core()
            source = core.compile_model(core.read_model(str(source)), "CPU", openvino_cpu_config())
        return OpenVINOInferenceModel.from_compiled(source, metadata, torch.device("cpu"), name)

    return runtime


class OpenVINOFormat(Format):
    name = "openvino"
    title = "OpenVINO IR"
    runtime_title = "OpenVINO"
    flag = "openvino"
    help = "also write an OpenVINO IR, <stem>_openvino_model/ (implies --onnx)"
    packages = (("openvino", "openvino"),)  # and nncf for --int8
    requirements = DEPLOY_REQUIREMENTS
    artefacts = (Artefact("_openvino_model"), Artefact("_int8_openvino_model", "int8"))
    shown_as = "*_openvino_model/ (or its .xml)"
    reads_onnx = True
    half = True
    any_folder = True
    quiet = False  # NNCF's progress bars and the --max-drop search's log lines are worth seeing

    def recognises(self, path: Path) -> bool:
        return path.suffix.lower() == ".xml" or path.name.endswith(self.artefacts[0].suffix)

    def xml(self, base: Path, artefact: Artefact) -> Path:
        """The .xml inside an artefact's folder, named after the base and what follows it in the folder's
        name: best_fused.xml for FP32, best_fused_int8.xml for INT8."""
        name = artefact.suffix.removesuffix(self.artefacts[0].suffix)
        return artefact.path(base) / f"{base.name}{name}.xml"

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        """The FP32 IR of the published ONNX graph and, once it is published, NNCF's INT8 of it (with
        --max-drop, NNCF's accuracy-controlled search); the head stays float."""
        fp32, int8 = self.artefacts
        folder = fp32.path(staged)
        export_openvino(inputs.onnx_path, folder / self.xml(inputs.base, fp32).name)
        yield Written(folder, "float32")
        if inputs.calibration is None:
            return
        import onnx

        graph = onnx.load(str(inputs.onnx_path), load_external_data=False)
        kept, metadata = decode_tail_nodes(graph), read_metadata(graph)
        folder, xml = int8.path(staged), self.xml(inputs.base, fp32)
        int8_xml = folder / self.xml(inputs.base, int8).name
        files, target, bounded = inputs.calibration, inputs.target(), None
        if target is None:
            quantize_openvino(xml, int8_xml, files, inputs.img_size, kept)
        else:
            runtime = cpu_runtime(metadata)
            bounded = quantize_openvino_within(xml, int8_xml, files, inputs.img_size, kept, target, runtime)
            LOGGER.info(bounded.describe())
        write_folder_metadata(folder, metadata)
        yield Written(folder, "int8", bounded)

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        self.require(f"running {path}", WeightsError)
        return OpenVINOInferenceModel(path, device, threads, half)


FORMAT = OpenVINOFormat()
