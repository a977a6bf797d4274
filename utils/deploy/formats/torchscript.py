"""TorchScript (``convert.py --torchscript``: best_fused.torchscript): the traced fused model, with its
metadata as the extra file config.txt (yolov5's); run by torch.jit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.deploy.formats.base import Artefact, ExportInputs, Format, Written
from utils.deploy.formats.common import traced
from utils.deploy.metadata import parse_json_metadata
from utils.inference import ArrayInferenceModel, InferenceModel

METADATA_FILE = "config.txt"


class TorchScriptInferenceModel(ArrayInferenceModel):
    """A traced model with its metadata in the extra file config.txt."""

    kind = "torchscript"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        extra = {METADATA_FILE: ""}
        with FORMAT.refusing(path):  # a broken zip or pickle: RuntimeError, ...
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[METADATA_FILE]
        metadata = parse_json_metadata(path, text, METADATA_FILE, "--torchscript") if text else None
        metadata, shape = FORMAT.exported_metadata(path, metadata)
        super().__init__(path, metadata, device, shape)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(array)).numpy()


class TorchScriptFormat(Format):
    name = "torchscript"
    title = "TorchScript"
    flag = "torchscript"
    help = "also write <stem>.torchscript"
    artefacts = (Artefact(".torchscript"),)
    shown_as = ".torchscript"

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        path = self.artefacts[0].path(staged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.save is deprecated
            module = traced(inputs.model, inputs.example)
            torch.jit.save(
                module, str(path), _extra_files={METADATA_FILE: json.dumps(inputs.static_metadata)}
            )
        yield Written(path, "float32")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return TorchScriptInferenceModel(path, device, threads)


FORMAT = TorchScriptFormat()
