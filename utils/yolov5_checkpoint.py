"""Reading ultralytics/yolov5 checkpoints without running anything they contain.

A yolov5 ``.pt`` is a pickled dict whose ``model`` and ``ema`` entries are whole pickled modules in
float16: ``models.yolo.DetectionModel`` (``models.yolo.Model`` before v6.2) holding ``models.common.Conv``,
``C3``, ``Bottleneck``, ``SPPF`` (``Focus`` and ``SPP`` before v6.0), ``Concat``, ``models.yolo.Detect``
and torch.nn modules, with the model's config dict in ``yaml``, ``names``, ``stride``, and Detect's
``anchors`` buffer in grid units. Unpickling it the ordinary way imports and runs whatever the file
names, so ``read_pickle`` goes through torch's weights-only unpickler with each of those class names
mapped to ``PickledObject``, an inert stand-in that only stores what it is given; every other global is
refused with one sentence, before anything is built. ``to_checkpoint`` turns the stand-ins into a RepYOLO
checkpoint dict (our graph's config and state-dict names, float32), so every entry point that reads our
checkpoints reads these too.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import torch

from utils import __version__
from utils.errors import CheckpointError

RELEASES_URL = "https://github.com/ultralytics/yolov5/releases"
RELEASE_NAME = re.compile(r"^yolov5[nsmlx]6?(-seg|-cls)?\.pt$")
MODEL_CLASSES = ("models.yolo.DetectionModel", "models.yolo.Model")
# The yolov5 classes a detection checkpoint pickles, with our names for their children.
YOLOV5_CHILDREN = {
    "models.common.Conv": {},
    "models.common.Bottleneck": {"cv1": "reduce", "cv2": "spatial"},
    "models.common.C3": {"cv1": "conv_main", "cv2": "conv_skip", "cv3": "conv_out", "m": "bottlenecks"},
    "models.common.SPPF": {"cv1": "conv_in", "cv2": "conv_out", "m": "pool"},
    "models.common.SPP": {"cv1": "conv_in", "cv2": "conv_out", "m": "pools"},
    "models.common.Focus": {},
    "models.common.Concat": {},
    "models.yolo.Detect": {"m": "level_convs"},
    "models.yolo.DetectionModel": {},
    "models.yolo.Model": {},
}
TORCH_NN_CLASSES = (
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.Hardswish",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
)
# Values of the metadata entries ("opt", "best_fitness" of an unfinished run), held and never used.
METADATA_CLASSES = (
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
# Module names in a yolov5 config row -> our registry's.
ROW_MODULES = {"nn.Upsample": "Upsample", "torch.nn.Upsample": "Upsample"}
SUPPORTED_ROWS = ("Conv", "C3", "Bottleneck", "SPPF", "SPP", "Focus", "Concat", "Upsample", "Detect")
ACTIVATIONS = {None: "SiLU", "nn.SiLU()": "SiLU", "nn.LeakyReLU(0.1)": "LeakyReLU", "nn.ReLU()": "ReLU"}
ACTIVATION_MODULES = {"SiLU": "SiLU", "LeakyReLU": "LeakyReLU", "ReLU": "ReLU", "Identity": "Identity"}


class PickledObject:
    """An inert stand-in for one class a yolov5 checkpoint pickles: it records the attributes (or
    arguments) it is given and has no behaviour, so building it from the file runs nothing."""

    pickled_class = "object"

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_class}>"


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (PickledObject,), {"pickled_class": name, "__module__": __name__})


STAND_INS = [(_stand_in(name), name) for name in (*YOLOV5_CHILDREN, *TORCH_NN_CLASSES, *METADATA_CLASSES)]


def read_pickle(path: Path) -> Any:
    """torch.load(weights_only=True) with the yolov5 and torch.nn classes as stand-ins; any other global
    raises CheckpointError saying what the file is."""
    try:
        with torch.serialization.safe_globals(STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except torch.serialization.pickle.UnpicklingError as error:
        match = re.search(r"GLOBAL (\S+)", str(error))
        if match is None:
            raise
        raise CheckpointError(refusal(path, match.group(1))) from None


def refusal(path: Path, name: str) -> str:
    """One sentence for a file whose pickle names the global `name`: what the file is and what is read."""
    what = "RepYOLO reads its own checkpoints and ultralytics/yolov5 detection checkpoints (v4.0 and later)"
    if name.startswith("ultralytics."):
        return (
            f"{path} is a model of the ultralytics package (YOLOv8 or later: it names {name}), whose "
            f"anchor-free head RepYOLO does not build; {what}, e.g. yolov5s.pt"
        )
    if name in ("models.yolo.SegmentationModel", "models.yolo.Segment", "models.common.Proto"):
        return f"{path} is a yolov5 segmentation checkpoint (it names {name}); {what}, e.g. yolov5s.pt"
    if name in ("models.yolo.ClassificationModel", "models.common.Classify"):
        return f"{path} is a yolov5 classification checkpoint (it names {name}); {what}, e.g. yolov5s.pt"
    if name.startswith(("models.blocks.", "models.head.")):  # one of our modules, pickled whole
        return (
            f"{path} holds Python objects (e.g. {name}), not plain data; use a RepYOLO checkpoint written "
            "by train.py or convert.py"
        )
    if name.startswith(("models.", "utils.")):
        return (
            f"{path} holds the class {name}, which no yolov5 v4.0+ detection model has (a YOLOv7 or "
            f"other fork's checkpoint?); it was not loaded: {what}"
        )
    return (
        f"{path} asks to load the Python global {name}, which no checkpoint needs and which could run "
        f"code, so it was refused and nothing in the file was run; {what}"
    )


def missing_release_message(path: Path) -> str | None:
    """One sentence for a missing yolov5 release file (yolov5 would download it; we never do); None for
    any other name."""
    if not RELEASE_NAME.match(path.name):
        return None
    return (
        f"{path} not found, and RepYOLO downloads nothing: download {path.name} yourself from the "
        f"ultralytics/yolov5 releases ({RELEASES_URL}) and pass its path"
    )


def is_yolov5_checkpoint(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and any(
        isinstance(ckpt.get(key), PickledObject) for key in ("ema", "model")
    )


def to_checkpoint(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """A RepYOLO checkpoint dict (see utils.checkpoint) from an unpickled yolov5 one: the EMA when set,
    else the model, as our config, float32 state dict in our names, nc, names and the BN eps."""
    model = ckpt.get("ema") if isinstance(ckpt.get("ema"), PickledObject) else ckpt.get("model")
    if model.pickled_class not in MODEL_CLASSES or not isinstance(getattr(model, "yaml", None), dict):
        raise CheckpointError(
            f"{path} holds a {model.pickled_class} without a model config; it is not a yolov5 detection "
            "checkpoint"
        )
    config = _config(model.yaml, path)
    config["yaml_file"] = Path(str(getattr(model, "yaml_file", None) or config["yaml_file"])).name
    layers = list(_children(_children(model)["model"]).values())
    stride = _tensor(layers[-1], "stride")  # Detect's
    stride = stride if stride is not None else _tensor(model, "stride")
    state = {}
    _collect(model, "", state)
    anchors_key = f"model.{len(layers) - 1}.anchors"
    anchors = state[anchors_key] * stride.float().view(-1, 1, 1)  # grid units -> pixels, as ours
    state[anchors_key] = anchors
    config["anchors"] = anchors.view(anchors.shape[0], -1).tolist()
    _check_activations(model, config["activation"], path)
    names = getattr(model, "names", None) or [f"class{i}" for i in range(int(config["nc"]))]
    names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
    opt = ckpt.get("opt") if isinstance(ckpt.get("opt"), dict) else {}
    image_size = opt.get("imgsz", opt.get("img_size"))
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) and image_size else image_size
    converted = {
        "model": state,
        "model_yaml": config,
        "nc": int(config["nc"]),
        "names": [str(name) for name in names],
        "deploy": False,
        "epoch": -1,
        "best_fitness": None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "version": __version__,
        "source_format": "ultralytics/yolov5",
        "bn_eps": _batch_norm_eps(model, path),
    }
    if isinstance(image_size, int):
        converted["opt"] = {"img_size": image_size}
    return converted


def _children(module: PickledObject) -> dict[str, PickledObject]:
    return dict(getattr(module, "_modules", None) or {})


def _tensor(module: PickledObject, name: str) -> torch.Tensor | None:
    """A stand-in's buffer or tensor attribute `name`, None if it has none."""
    value = (getattr(module, "_buffers", None) or {}).get(name, getattr(module, name, None))
    return value if isinstance(value, torch.Tensor) else None


def _collect(module: PickledObject, prefix: str, state: dict[str, torch.Tensor]) -> None:
    """The state dict of a stand-in tree, in our names (YOLOV5_CHILDREN), floating tensors as float32."""
    renames = YOLOV5_CHILDREN.get(module.pickled_class, {})
    skipped = set(getattr(module, "_non_persistent_buffers_set", ()) or ()) | {"anchor_grid"}
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (getattr(module, kind, None) or {}).items():
            if tensor is not None and name not in skipped:
                state[prefix + name] = (
                    tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
                )
    for name, child in _children(module).items():
        if child is not None:
            _collect(child, f"{prefix}{renames.get(name, name)}.", state)


def _config(yaml: dict, path: Path) -> dict:
    """Our model config from a yolov5 one: module names mapped, the activation named as ours."""
    config = {key: value for key, value in yaml.items() if key not in ("ch",)}
    rows = []
    for row in list(config.get("backbone") or []) + list(config.get("head") or []):
        name = ROW_MODULES.get(row[2], row[2]) if isinstance(row, (list, tuple)) and len(row) == 4 else None
        if name == "BottleneckCSP":
            raise CheckpointError(
                f"{path} is from a yolov5 release before v4.0 (BottleneckCSP blocks), which RepYOLO "
                "does not read; use a checkpoint of yolov5 v4.0 or later"
            )
        if name not in SUPPORTED_ROWS:
            raise CheckpointError(
                f"{path}'s model config has the row {row}, which is not a yolov5 detection "
                f"block RepYOLO builds ({', '.join(SUPPORTED_ROWS)})"
            )
        rows.append([row[0], row[1], name, list(row[3])])
    config["backbone"], config["head"] = rows[: len(yaml["backbone"])], rows[len(yaml["backbone"]) :]
    activation = yaml.get("activation")
    if activation not in ACTIVATIONS:
        raise CheckpointError(
            f"{path}'s model uses the activation {activation}; RepYOLO builds SiLU, LeakyReLU(0.1) and ReLU"
        )
    config["activation"] = ACTIVATIONS[activation]
    config.setdefault("yaml_file", Path(str(yaml.get("yaml_file", path.name))).name)
    return config


def _modules(module: PickledObject) -> list[PickledObject]:
    found = [module]
    for child in _children(module).values():
        if child is not None:
            found.extend(_modules(child))
    return found


def _check_activations(model: PickledObject, activation: str, path: Path) -> None:
    """Every Conv's activation module is the one the config names (v3.x used Hardswish)."""
    for module in _modules(model):
        if module.pickled_class != "models.common.Conv" or "act" not in _children(module):
            continue
        act = _children(module)["act"]
        kind = act.pickled_class.rsplit(".", 1)[-1] if isinstance(act, PickledObject) else "Identity"
        slope = getattr(act, "negative_slope", 0.1)
        if ACTIVATION_MODULES.get(kind) != activation or (kind == "LeakyReLU" and abs(slope - 0.1) > 1e-9):
            raise CheckpointError(
                f"{path} uses {kind} activations where its config says {activation}; "
                "RepYOLO reads yolov5 v4.0 and later (SiLU by default)"
            )


def _batch_norm_eps(model: PickledObject, path: Path) -> float:
    """The one eps of every BatchNorm (yolov5 sets 1e-3): outside the state dict, yet it changes outputs."""
    values = {float(m.eps) for m in _modules(model) if m.pickled_class.endswith("BatchNorm2d")}
    if len(values) > 1:
        raise CheckpointError(
            f"{path}'s BatchNorm layers use several eps values {sorted(values)}; RepYOLO "
            "reads models whose BatchNorms share one (yolov5 sets 1e-3)"
        )
    return values.pop() if values else 1e-3
