"""Checkpoints as plain data: atomic writes, weights_only loads, and rebuilding the matching graph.

A checkpoint dict holds "model" (state dict to infer with), "model_yaml" (dict), "nc", "names",
"deploy", "epoch" (-1 when final), "best_fitness", "date", "version", and for training runs
"hyp", "opt", "data", "results", plus what a resume needs until the run finishes: "raw_model",
"optimizer", "ema_updates" and "finishing" (the epochs are done; only the end-of-run step remains).
``make_checkpoint`` is the one builder; the trainer and convert.py add keys. An ultralytics/yolov5
checkpoint is read as one of ours (utils/yolov5_checkpoint.py: no code in it runs), with "bn_eps" and
"source_format" added.
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
from models.grow import TransferReport, transfer_weights
from utils import __version__
from utils.errors import CheckpointError
from utils.paths import atomic_open
from utils.yolov5_checkpoint import is_yolov5_checkpoint, missing_release_message, read_pickle, to_checkpoint

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
    unusable files; an ultralytics/yolov5 checkpoint comes back converted to our format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            missing_release_message(path)
            or f"{path}: checkpoint not found; check the path (or train one with train.py)"
        )
    try:
        ckpt = read_pickle(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} is corrupt or not a PyTorch file; re-download or re-save it") from None
    except Exception as error:  # torch.load raises many types (struct.error, zip errors, ...)
        LOGGER.debug("torch.load(%s) failed: %s", path, error)
        raise CheckpointError(
            f"{path} is corrupt, truncated or not a PyTorch file; re-download or re-save it"
        ) from None
    if is_yolov5_checkpoint(ckpt):
        return to_checkpoint(ckpt, path)
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
    if "bn_eps" in ckpt:  # a yolov5 checkpoint's BatchNorm eps (outside the state dict)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = float(ckpt["bn_eps"])
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


def load_model(
    path: str | Path, device: str | torch.device = "cpu", cfg: str | Path | dict | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(Model in eval mode, float32, on `device`; the checkpoint dict) from a checkpoint file: ours or an
    ultralytics/yolov5 one. With `cfg` (e.g. "repyolov5s-dbb.yaml") the checkpoint's weights are moved
    into that graph instead, plain convs grown into its re-parameterized blocks (see grow_from_checkpoint)."""
    ckpt = load_checkpoint(path)
    if cfg is None:
        model = model_from_checkpoint(ckpt, source=str(path))
    else:
        model, _ = grow_from_checkpoint(ckpt, cfg, int(ckpt["nc"]), source=str(path))
    return model.float().eval().to(device), ckpt


MIN_TRANSFER_FRACTION = 0.5  # below this share of the weights' values used, a transfer is a mismatch


def grow_from_checkpoint(
    ckpt: dict[str, Any], cfg: str | Path | dict | None, nc: int, source: str = "checkpoint"
) -> tuple[nn.Module, TransferReport]:
    """(a training-form Model of `cfg` (None: the checkpoint's own graph) for nc classes, initialized from
    the checkpoint; the report). Layers of the same class and shapes load as they are, plain convs grow
    into re-parameterized blocks with the function unchanged, the rest (e.g. Detect for another nc) keeps
    its fresh initialization. With a cfg its anchors are kept. CheckpointError for a fused checkpoint or
    one whose weights fit less than half of the model (a wrong cfg for the weights)."""
    from models.yolo import Model

    if ckpt.get("deploy"):
        raise CheckpointError(
            f"{source} is a fused (deploy) checkpoint, which cannot be trained; start from the "
            "training-form checkpoint instead (e.g. best.pt, not best_fused.pt)."
        )
    trained = model_from_checkpoint(ckpt, source=source)
    model = Model(cfg or ckpt["model_yaml"], nc=nc)
    report = transfer_weights(trained, model, skip_suffixes=(".anchors",) if cfg else ())
    if report.fraction < MIN_TRANSFER_FRACTION:
        target = model.yaml.get("yaml_file", "the model config") if cfg else "its own config"
        raise CheckpointError(
            f"{source} fits {target} badly: only {report.fraction:.0%} of its weights found a place "
            f"({report.mismatches[0] if report.mismatches else 'nothing matched'}); give the cfg of the "
            "same size and family as the weights (e.g. repyolov5s.yaml for yolov5s.pt), or no cfg"
        )
    return model, report
