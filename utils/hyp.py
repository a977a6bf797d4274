"""Training hyperparameters: a typed dataclass loaded from a YAML file in data/hyps/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from utils.errors import ConfigError, ConfigNotFoundError
from utils.paths import ROOT, load_yaml_mapping


@dataclass
class Hyp:
    # optimizer and schedule
    lr0: float = 0.01  # initial learning rate (SGD 1e-2, AdamW 1e-3)
    lrf: float = 0.01  # final learning rate = lr0 * lrf
    momentum: float = 0.937  # SGD momentum / AdamW beta1
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    # initial BN scale (gamma) of RepVGG blocks' 1x1 and identity branches when training from scratch:
    # 0 starts each block as its kxk conv+BN alone, the side branches growing in (chosen by bench.accuracy
    # on data/shapes-hard.yaml, see bench/README.md); 1 is PyTorch's default. Plain models ignore it.
    rep_branch_gamma: float = 0.0
    # loss
    box: float = 0.05  # box loss gain
    cls: float = 0.5  # classification loss gain
    cls_pw: float = 1.0  # classification BCE positive weight
    obj: float = 1.0  # objectness loss gain (scaled with image size)
    obj_pw: float = 1.0  # objectness BCE positive weight
    iou_t: float = 0.20  # IoU training threshold (unused by the ratio matcher, kept for yolov5 files)
    anchor_t: float = 4.0  # anchor-multiple threshold for matching targets to anchors
    fl_gamma: float = 0.0  # focal loss gamma (0 disables focal loss)
    label_smoothing: float = 0.0
    # augmentation
    hsv_h: float = 0.015  # hue jitter (fraction)
    hsv_s: float = 0.7  # saturation jitter (fraction)
    hsv_v: float = 0.4  # value jitter (fraction)
    degrees: float = 0.0  # rotation (+/- deg)
    translate: float = 0.1  # translation (+/- fraction)
    scale: float = 0.5  # scale gain (+/- gain)
    shear: float = 0.0  # shear (+/- deg)
    perspective: float = 0.0  # perspective (+/- fraction), 0 to 0.001
    flipud: float = 0.0  # probability of an up-down flip
    fliplr: float = 0.5  # probability of a left-right flip
    mosaic: float = 1.0  # probability of a 4-image mosaic
    mixup: float = 0.0  # probability of mixup
    copy_paste: float = 0.0  # fraction of a mosaic's polygon objects pasted, mirrored (needs polygons)
    # model: anchors per output level, which AutoAnchor then computes from the training labels (yolov5's
    # key, rounded as yolov5 rounds it); 0 keeps the model YAML's anchors
    anchors: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "hyperparameters") -> Hyp:
        """Typed values of the known keys (every key of yolov5's hyperparameter files)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown hyperparameter(s) {unknown}; known keys are {sorted(known)}."
            )
        typed = {}
        for key, value in values.items():
            try:
                typed[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{source}: {key} is {value!r}, not a number; give it a numeric value."
                ) from None
        return cls(**typed)


def load_hyp(path: str | Path | None = None) -> Hyp:
    """Load a hyperparameter YAML; a bare name is looked up in data/hyps/. None gives the defaults."""
    if path is None:
        return Hyp()
    path = Path(path)
    if not path.exists() and (ROOT / "data" / "hyps" / path.name).exists():
        path = ROOT / "data" / "hyps" / path.name
    if not path.exists():
        raise ConfigNotFoundError(f"Hyperparameter file {path} does not exist; pass a YAML from data/hyps/.")
    values = load_yaml_mapping(path, ConfigError, "hyperparameter names to values (see data/hyps/)")
    return Hyp.from_dict(values, source=str(path))
