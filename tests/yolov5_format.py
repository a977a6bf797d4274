"""Test fixtures in the ultralytics/yolov5 checkpoint format, written from our own models (no yolov5 code).

A yolov5 checkpoint pickles whole modules: ``models.yolo.DetectionModel`` holding ``models.common.Conv``,
``C3``, ... and torch.nn modules, with yolov5's attribute names (cv1, cv2, m, ...). We mirror one of our
models into real nn.Modules of classes that pickle under those names (a pure-Python pickler writes the
names; the classes exist only here), float16, Detect's anchors in grid units, the config in yolov5's row
format. Also: pickles that name other globals, for the refusal tests.
"""

from __future__ import annotations

import copy
import os
import pickle
import types
from pathlib import Path

import torch
from torch import nn

# Our class -> (yolov5 class, our child name -> yolov5's).
YOLOV5_CLASSES = {
    "Conv": ("models.common.Conv", {}),
    "Bottleneck": ("models.common.Bottleneck", {"reduce": "cv1", "spatial": "cv2"}),
    "C3": (
        "models.common.C3",
        {"conv_main": "cv1", "conv_skip": "cv2", "conv_out": "cv3", "bottlenecks": "m"},
    ),
    "SPPF": ("models.common.SPPF", {"conv_in": "cv1", "conv_out": "cv2", "pool": "m"}),
    "SPP": ("models.common.SPP", {"conv_in": "cv1", "conv_out": "cv2", "pools": "m"}),
    "Focus": ("models.common.Focus", {}),
    "Concat": ("models.common.Concat", {}),
    "Detect": ("models.yolo.Detect", {"level_convs": "m"}),
}
_SHELLS: dict[str, type] = {}


def shell_class(name: str) -> type:
    """An nn.Module class that pickles as `name` (e.g. "models.common.Conv")."""
    if name not in _SHELLS:
        module, qualname = name.rsplit(".", 1)
        _SHELLS[name] = type(qualname, (nn.Module,), {"pickled_as": name, "__module__": module})
    return _SHELLS[name]


class Yolov5Pickler(pickle._Pickler):
    """Writes a shell class under its yolov5 name; everything else as pickle does."""

    def save_global(self, obj, name=None):
        target = getattr(obj, "pickled_as", None) if isinstance(obj, type) else None
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target.rsplit(".", 1)
        self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)


PICKLE_MODULE = types.SimpleNamespace(__name__="yolov5_pickle", Pickler=Yolov5Pickler)


def mirror(module: nn.Module) -> nn.Module:
    """A copy of one of our modules as yolov5 pickles it."""
    kind = type(module).__name__
    if kind == "Upsample":
        return nn.Upsample(size=None, scale_factor=module.scale_factor, mode=module.mode)
    if kind not in YOLOV5_CLASSES:  # torch.nn: leaves as they are, containers with mirrored children
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            return (
                type(module)([mirror(child) for child in module])
                if isinstance(module, nn.ModuleList)
                else nn.Sequential(*(mirror(c) for c in module))
            )
        return copy.deepcopy(module)
    name, renames = YOLOV5_CLASSES[kind]
    shell = shell_class(name)()
    for child_name, child in module.named_children():
        setattr(shell, renames.get(child_name, child_name), mirror(child))
    if kind == "Detect":  # yolov5: anchors in grid units, stride an attribute
        shell.register_buffer("anchors", module.anchors.detach() / module.stride.view(-1, 1, 1))
        shell.stride = module.stride.clone()
        shell.nc, shell.no, shell.nl, shell.na = module.nc, module.no, module.nl, module.na
        shell.grid = [torch.empty(0) for _ in range(module.nl)]
        shell.anchor_grid = [torch.empty(0) for _ in range(module.nl)]
        shell.inplace = True
    if kind == "Concat":
        shell.d = 1
    return shell


def yolov5_config(model_yaml: dict) -> dict:
    """Our config as yolov5 writes it: nn.Upsample rows, no activation key for SiLU."""
    config = {key: copy.deepcopy(value) for key, value in model_yaml.items() if key != "yaml_file"}
    for part in ("backbone", "head"):
        config[part] = [
            [f, n, "nn.Upsample" if m == "Upsample" else m, args] for f, n, m, args in config[part]
        ]
    if config.get("activation") == "SiLU":
        config.pop("activation")
    elif config.get("activation") == "LeakyReLU":
        config["activation"] = "nn.LeakyReLU(0.1)"
    config["ch"] = 3
    return config


def yolov5_model(model: nn.Module, model_class: str = "models.yolo.DetectionModel") -> nn.Module:
    """One of our Models mirrored as a yolov5 DetectionModel in float16."""
    shell = shell_class(model_class)()
    shell.model = nn.Sequential(*(mirror(layer) for layer in model.model))
    for index, layer in enumerate(shell.model):
        layer.i, layer.f, layer.type = index, model.model[index].from_index, type(layer).__name__
    shell.yaml = yolov5_config(model.yaml)
    shell.yaml_file = "yolov5s.yaml"
    shell.save = list(model.saved)
    shell.names = {index: name for index, name in enumerate(model.names)}
    shell.nc = model.nc
    shell.stride = model.stride.clone()
    shell.inplace = True
    shell.hyp = {"lr0": 0.01, "box": 0.05}
    shell.class_weights = torch.ones(model.nc)
    return shell.half()


def write_yolov5_checkpoint(
    model: nn.Module,
    path: Path,
    ema: bool | nn.Module = True,
    model_class: str = "models.yolo.DetectionModel",
) -> Path:
    """Write `model` (one of ours, eval weights) as an ultralytics/yolov5 checkpoint: "model" and "ema"
    (yolov5 keeps the EMA there during training and strips it from released files): the same weights
    when `ema` is True, None when False, or another model of ours."""
    pickled = yolov5_model(model, model_class)
    if isinstance(ema, nn.Module):
        ema = yolov5_model(ema, model_class)
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": pickled,
        "ema": ema if isinstance(ema, nn.Module) else copy.deepcopy(pickled) if ema else None,
        "updates": None,
        "optimizer": None,
        "opt": {"imgsz": 128, "epochs": 3, "batch_size": 4, "weights": "yolov5s.pt"},
        "git": {"remote": "yolov5", "branch": "master", "commit": "0000000"},
        "date": "2026-11-25T12:00:00",
    }
    torch.save(ckpt, path, pickle_module=PICKLE_MODULE)
    return path


class RunsCode:
    """Pickles as a call of `function(*args)`: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def write_hostile_checkpoint(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint that would create `marker` on load: kind "os.system", "eval" or "class" (an unknown
    class named like a yolov5 one, whose unpickling would run code)."""
    if kind == "os.system":
        payload = RunsCode(os.system, f"touch {marker}")
    elif kind == "eval":
        payload = RunsCode(eval, f"open({str(marker)!r}, 'w').close()")
    else:
        payload = shell_class("models.common.GhostConv")()
    torch.save({"model": payload, "epoch": -1}, path, pickle_module=PICKLE_MODULE)
    return path


def write_foreign_checkpoint(path: Path, model_class: str) -> Path:
    """A checkpoint whose model pickles as `model_class` (e.g. "ultralytics.nn.tasks.DetectionModel")."""
    shell = shell_class(model_class)()
    shell.conv = nn.Conv2d(3, 4, 1)
    torch.save({"model": shell.half(), "epoch": -1}, path, pickle_module=PICKLE_MODULE)
    return path
