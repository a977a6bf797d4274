"""Checkpoints as plain data: atomic writes, weights_only loads, and rebuilding the matching graph.

A checkpoint dict holds "model" (state dict to infer with), "model_yaml" (dict), "nc", "names",
"deploy", "epoch" (-1 when final), "best_fitness", "date", "version", and for training runs
"hyp", "opt", "data", "results", plus what a resume needs until the run finishes: "raw_model",
"optimizer", "ema_updates" and "finishing" (the epochs are done; only the end-of-run step remains).
``make_checkpoint`` is the one builder; the trainer and convert.py add keys.
"""

from __future__ import annotations

import copy
import datetime
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.errors import ModelConfigError
from utils import __version__
from utils.errors import CheckpointError
from utils.paths import atomic_open

LOGGER = logging.getLogger(__name__)
REQUIRED_KEYS = ("model", "model_yaml", "deploy")
RESUME_KEYS = ("raw_model", "optimizer", "ema_updates", "finishing")  # dropped when the run finishes
__all__ = ["CheckpointError", "load_checkpoint", "load_model", "make_checkpoint", "save_checkpoint"]


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` with torch.save atomically (see utils.paths.atomic_open)."""
    with atomic_open(path, "wb") as file:
        torch.save(ckpt, file)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) onto the CPU, with one-sentence CheckpointError messages for
    unusable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path (or train one with train.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():  # a pickled class, e.g. a whole nn.Module
            raise CheckpointError(
                f"{path} holds Python objects, not plain data (e.g. an ultralytics/yolov5 .pt); "
                "use a RepYOLO checkpoint written by train.py or convert.py"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a PyTorch file; re-download or re-save it") from None
    except Exception as error:  # torch.load raises many types (struct.error, zip errors, ...)
        LOGGER.debug("torch.load(%s) failed: %s", path, error)
        raise CheckpointError(
            f"{path} is corrupt, truncated or not a PyTorch file; re-download or re-save it"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a RepYOLO checkpoint (not a dict); use one written by train.py")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} lacks the keys {missing}, so it is not a RepYOLO checkpoint; "
            "use a file written by train.py or convert.py"
        )
    return ckpt


def make_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """Plain-data checkpoint for inference from a Model; `extra` keys (epoch, optimizer, ...) override.
    Pass option dicts through ``plain`` first; state dicts go in as they are."""
    ckpt = {
        "model": {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()},
        "model_yaml": copy.deepcopy(model.yaml),
        "nc": int(model.nc),
        "names": [str(name) for name in model.names],
        "deploy": bool(model.deploy),
        "epoch": -1,
        "best_fitness": None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "version": __version__,
    }
    ckpt.update(extra)
    return ckpt


def final_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A finished run's checkpoint: inference weights and metadata only, epoch -1."""
    return {**{k: v for k, v in ckpt.items() if k not in RESUME_KEYS}, "epoch": -1}


def plain(value: Any) -> Any:
    """Paths -> str, tuples -> lists, numpy scalars -> Python, recursively, so the checkpoint loads with
    weights_only=True. Tensors stay tensors."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    return str(value)


def model_from_checkpoint(
    ckpt: dict[str, Any], weights_key: str = "model", source: str = "checkpoint"
) -> nn.Module:
    """Build Model(ckpt["model_yaml"], deploy=ckpt["deploy"]), load ckpt[weights_key] strictly, set names.

    `source` (the file name) is used in error messages.
    """
    from models.yolo import Model

    weights = ckpt.get(weights_key)
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"{source} has no '{weights_key}' state dict; use a checkpoint written by train.py"
        )
    try:
        model = Model(ckpt["model_yaml"], nc=ckpt.get("nc"), deploy=bool(ckpt["deploy"]))
    except (ModelConfigError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"{source} has an unusable model_yaml ({error}); re-save the checkpoint"
        ) from None
    problems = _state_dict_problems(model.state_dict(), weights)
    if problems:
        form = "fused (deploy)" if ckpt["deploy"] else "training-form"
        raise CheckpointError(
            f"{source}: the '{weights_key}' weights do not fit the {form} graph of its model_yaml "
            f"({problems}); its 'deploy' flag or model_yaml is wrong: re-save it with train.py or convert.py"
        )
    model.load_state_dict(weights, strict=True)
    if ckpt.get("names"):
        model.names = [str(name) for name in ckpt["names"]]
    return model


def _state_dict_problems(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """'' when `given` loads strictly into a module whose state dict is `expected`, else a short summary."""
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    reshaped = [
        name
        for name, tensor in given.items()
        if name in expected and tuple(getattr(tensor, "shape", ())) != tuple(expected[name].shape)
    ]
    if not (missing or unexpected or reshaped):
        return ""
    examples = (missing + unexpected + reshaped)[:3]
    return (
        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} wrong shapes, e.g. {examples}"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(Model in eval mode, float32, on `device`; the checkpoint dict) from a checkpoint file."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, source=str(path))
    return model.float().eval().to(device), ckpt
