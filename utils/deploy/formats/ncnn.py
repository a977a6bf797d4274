"""NCNN (``convert.py --ncnn``: best_fused_ncnn_model/ holding model.ncnn.param, model.ncnn.bin and
metadata.yaml): pnnx converts the traced model; run by NCNN in float32 on the CPU."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.deploy.formats.base import EDGE_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.deploy.formats.common import traced
from utils.deploy.metadata import read_folder_metadata, write_folder_metadata
from utils.errors import ConversionError, WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel

LOGGER = logging.getLogger(__name__)
PARAM, WEIGHTS = "model.ncnn.param", "model.ncnn.bin"  # in the model folder
PARAM_MAGIC = b"7767517"


class NcnnInferenceModel(ArrayInferenceModel):
    """An NCNN model folder run in float32 on the CPU (no float16 or bfloat16 storage, which NCNN picks by
    default where it can)."""

    kind = "ncnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        param, weights = path / PARAM, path / WEIGHTS
        if not (param.is_file() and weights.is_file()):
            raise WeightsError(
                f"{path} should hold {PARAM} and {WEIGHTS}; re-export it with convert.py --ncnn."
            )
        metadata = read_folder_metadata(path, PARAM, "--ncnn")
        metadata, shape = FORMAT.exported_metadata(path, metadata)
        FORMAT.require(f"running {path}", WeightsError)
        import ncnn

        with open(param, "rb") as file:
            magic = file.readline().strip()
        self.net = ncnn.Net()
        options = self.net.opt
        options.use_vulkan_compute = False
        for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(options, name, False)
        if threads:
            options.num_threads = threads
        loaded = magic == PARAM_MAGIC and self.net.load_param(str(param)) == 0
        if not (loaded and self.net.load_model(str(weights)) == 0):
            raise FORMAT.corrupt(path)
        super().__init__(path, metadata, device, shape)
        self.ncnn = ncnn
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]

    def run_array(self, array: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(array[0])  # NCNN takes one (C, H, W) image; kept alive while it runs
        with self.net.create_extractor() as extractor:
            extractor.input(self.input_name, self.ncnn.Mat(image))
            status, output = extractor.extract(self.output_name)
            if status != 0:
                raise WeightsError(f"NCNN could not run {self.path} (status {status}); re-export it.")
            return np.array(output)[None].copy()  # the Mat's memory goes with the extractor


class NcnnFormat(Format):
    name = "ncnn"
    title = "NCNN"
    flag = "ncnn"
    help = "also write an NCNN model, <stem>_ncnn_model/ (pnnx)"
    packages = (("pnnx", "pnnx"), ("ncnn", "ncnn"))
    requirements = EDGE_REQUIREMENTS
    artefacts = (Artefact("_ncnn_model"),)
    shown_as = "*_ncnn_model/"

    def recognises(self, path: Path) -> bool:
        return path.is_dir() and ((path / PARAM).exists() or path.name.endswith(self.artefacts[0].suffix))

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        """pnnx converts the traced model (FP32 weights: pnnx stores float16 by default)."""
        import pnnx

        folder = self.artefacts[0].path(staged)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as work:
            traced_file = Path(work).resolve() / "model.pt"  # pnnx runs in ``work``: an absolute path
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced(inputs.model, inputs.example).save(str(traced_file))
            input_shape = "inputshape=[" + ",".join(map(str, inputs.example.shape)) + "]"
            command = [pnnx.EXEC_PATH, str(traced_file), input_shape, "fp16=0"]
            result = subprocess.run(command, cwd=work, capture_output=True, text=True)
            produced = [Path(work) / f"model{suffix}" for suffix in (".ncnn.param", ".ncnn.bin")]
            if result.returncode != 0 or not all(p.is_file() for p in produced):
                LOGGER.debug("pnnx said:\n%s\n%s", result.stdout, result.stderr)
                raise ConversionError(
                    f"pnnx could not convert the model to NCNN (exit {result.returncode}: "
                    f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}); report the model's "
                    "config."
                )
            produced[0].replace(folder / PARAM)
            produced[1].replace(folder / WEIGHTS)
        write_folder_metadata(folder, inputs.static_metadata)
        yield Written(folder, "float32")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return NcnnInferenceModel(path, device, threads)


FORMAT = NcnnFormat()
