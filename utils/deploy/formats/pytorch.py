"""The PyTorch checkpoint: a .pt (or .pth) in either form, the training form or the fused one that convert.py
writes first (utils.deploy.fuse), or a yolov5 checkpoint; run by PyTorch itself, in half precision with
--half (float16 on CUDA, bfloat16 on a CPU that computes it natively)."""

from __future__ import annotations

from pathlib import Path

import torch

from utils.deploy.formats.base import Artefact, Format
from utils.device import half_dtype
from utils.inference import InferenceModel, TorchInferenceModel


class PyTorchFormat(Format):
    name = "pytorch"
    title = "PyTorch checkpoint"
    runtime_title = "PyTorch .pt"
    artefacts = (Artefact(".pt"),)
    shown_as = ".pt"
    half = True

    def recognises(self, path: Path) -> bool:
        return path.suffix.lower() in (".pt", ".pth")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        from utils.checkpoint import load_model

        network, ckpt = load_model(path, device=device)
        model = TorchInferenceModel(network, device, half_dtype(device) if half else None)
        recorded = (ckpt.get("opt") or {}).get("img_size")
        model.train_img_size = int(recorded) if recorded else None
        return model


FORMAT = PyTorchFormat()
