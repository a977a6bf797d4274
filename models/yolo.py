"""Model: a YOLOv5-family graph built from a YAML file, plus the summary CLI.

python -m models.yolo --cfg repyolov5s.yaml --img 640
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import Tensor, nn

from models.blocks import BLOCKS, BuildContext
from models.errors import ModelConfigError, ModelConfigNotFoundError
from models.head import DEFAULT_ANCHORS, Detect
from models.reparam import reparameterize_model

LOGGER = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = ("nc", "depth_multiple", "width_multiple", "backbone", "head")


def resolve_cfg(cfg: str | Path) -> Path:
    """A YAML path, or a bare name such as 'repyolov5s.yaml' (or 'repyolov5s') looked up under models/."""
    path = Path(cfg)
    candidates = [path, MODELS_DIR / path.name, MODELS_DIR / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.name for p in MODELS_DIR.glob("*.yaml")))
    raise ModelConfigNotFoundError(f"model config '{cfg}' not found; give a YAML path or one of: {known}")


def load_model_yaml(cfg: str | Path | dict) -> tuple[dict, str]:
    """(config dict, source name for messages). Dicts are deep-copied."""
    if isinstance(cfg, dict):
        config, source = copy.deepcopy(cfg), cfg.get("yaml_file", "model config")
    else:
        path = resolve_cfg(cfg)
        source = str(path)
        try:
            with open(path, encoding="utf-8") as file:
                config = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise ModelConfigError(f"{source} is not valid YAML ({error}); fix its syntax") from None
        if not isinstance(config, dict):
            raise ModelConfigError(
                f"{source} is not a model YAML mapping; see models/yolov5s.yaml for the format"
            )
        config["yaml_file"] = path.name
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ModelConfigError(f"{source} lacks the keys {missing}; add them (see models/yolov5s.yaml)")
    return config, source


def with_anchor_count(cfg: str | Path | dict, per_level: int) -> dict:
    """The model config with ``per_level`` placeholder anchors on each of its output levels, as yolov5's
    ``anchors`` hyperparameter asks: they fit no box, so AutoAnchor replaces them with anchors computed from
    the training labels (k-means, then evolution)."""
    config, _ = load_model_yaml(cfg)
    levels = len(config.get("anchors") or DEFAULT_ANCHORS)
    config["anchors"] = [[float(v) for v in range(1, 2 * per_level + 1)] for _ in range(levels)]
    return config


def _substitute(arg: Any, config: dict) -> Any:
    # 'nc' and 'anchors' in args name the top-level keys; nothing is ever eval'd.
    if isinstance(arg, str) and arg in ("nc", "anchors"):
        return config.get(arg) if arg == "nc" else config.get("anchors")
    return arg


def parse_model(config: dict, in_channels: int = 3, deploy: bool = False, source: str = "model config"):
    """Build the layer list from the YAML rows. Returns (nn.Sequential of layers, sorted saved indices).

    Each layer gets attributes `index`, `from_index` (int or list), `block_name`, `repeats`, `yaml_args`.
    """
    depth = float(config["depth_multiple"])
    context = BuildContext(
        width_multiple=float(config["width_multiple"]),
        activation=config.get("activation", "SiLU"),
        deploy=deploy,
        registry=BLOCKS,
    )
    rows = list(config["backbone"]) + list(config["head"])
    channels: list[int] = [in_channels]  # channels[i + 1] is the output of layer i
    layers, saved = [], set()
    for index, row in enumerate(rows):
        try:
            layer = _build_layer(index, row, channels, depth, context, config)
        except (ValueError, TypeError, IndexError) as error:
            raise ModelConfigError(
                f"{source}: layer {index} {row}: {error}; fix this row of the YAML"
            ) from None
        froms = layer.from_index if isinstance(layer.from_index, list) else [layer.from_index]
        saved.update(f if f >= 0 else index + f for f in froms if f != -1)
        layers.append(layer)
        channels.append(layer.out_channels)
    if not isinstance(layers[-1], Detect):
        raise ModelConfigError(
            f"{source}: the last head row must be Detect; add [[P3, P4, P5], 1, Detect, [nc, anchors]]"
        )
    return nn.Sequential(*layers), sorted(saved)


def _build_layer(
    index: int, row: Any, channels: list[int], depth: float, context: BuildContext, config: dict
) -> nn.Module:
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ValueError("each row must be [from, number, module, args]")
    from_index, number, name, args = row
    block = context.lookup(name)
    froms = from_index if isinstance(from_index, list) else [from_index]
    if not all(isinstance(f, int) and -index <= f < index for f in froms if f != -1) or not froms:
        raise ValueError(f"'from' must name earlier layers (got {from_index})")
    in_channels = [channels[f + 1] if f >= 0 else channels[index + 1 + f] for f in froms]
    repeats = max(round(number * depth), 1) if number > 1 else number
    args = [_substitute(arg, config) for arg in (args or [])]
    layer, out_channels = block.from_yaml(in_channels, args, repeats, context)
    layer.index, layer.from_index, layer.block_name = index, from_index, name
    layer.repeats, layer.yaml_args, layer.out_channels = repeats, args, out_channels
    return layer


class Model(nn.Module):
    """A detector built from a YAML graph (see models/yolov5s.yaml).

    Input Tensor[B, 3, H, W] RGB in 0..1, H and W multiples of 32. Output: see models.head.Detect.
    `deploy=True` builds every block directly in its fused form (for loading a fused state dict).
    """

    def __init__(
        self, cfg: str | Path | dict, nc: int | None = None, deploy: bool = False, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.yaml, source = load_model_yaml(cfg)
        if nc is not None and nc != self.yaml["nc"]:
            LOGGER.info("Overriding nc=%s in %s with nc=%d", self.yaml["nc"], source, nc)
            self.yaml["nc"] = nc
        self.yaml.setdefault("anchors", copy.deepcopy(DEFAULT_ANCHORS))
        self.model, self.saved = parse_model(self.yaml, in_channels, deploy, source)
        self.deploy = deploy
        self.nc = int(self.yaml["nc"])
        self.names = [f"class{i}" for i in range(self.nc)]
        self._init_stride(in_channels)
        self.detect.initialize_biases()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> Tensor:
        return self.detect.stride

    def _init_stride(self, in_channels: int, size: int = 128) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            features = self.forward_features(torch.zeros(1, in_channels, size, size))
        self.train(was_training)
        self.detect.stride.copy_(torch.tensor([size / feature.shape[-2] for feature in features]))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Run every layer but Detect; returns Detect's input feature maps (P3, P4, P5)."""
        outputs: list[Tensor | None] = []
        for layer in self.model:
            if isinstance(layer.from_index, list):
                x = [x if f == -1 else outputs[f] for f in layer.from_index]
            elif layer.from_index != -1:
                x = outputs[layer.from_index]
            if layer is self.model[-1]:
                return x
            x = layer(x)
            outputs.append(x if layer.index in self.saved else None)
        raise RuntimeError("model has no Detect layer")

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        return self.detect(self.forward_features(x))

    def reparameterize(self) -> Model:
        """Fuse every re-parameterizable block and fold every Conv+BN (in place, idempotent); returns self."""
        reparameterize_model(self)
        self.deploy = True
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, img_size: int | Sequence[int] = 640) -> float:
    """Forward GFLOPs (2 x multiply-accumulates, the YOLOv5 convention) for one image, in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    parameter = next(model.parameters())
    x = torch.zeros(1, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    modes = {module: module.training for module in model.modules()}  # each restored as it was
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    for module, training in modes.items():
        module.training = training
    return counter.get_total_flops() / 1e9


def layer_table(model: Model) -> str:
    """One line per layer: index, from, n, params, module, args."""
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<14}{'arguments'}"]
    for layer in model.model:
        args = [getattr(a, "__name__", a) for a in layer.yaml_args]
        if isinstance(layer, Detect):
            args = [layer.nc, f"anchors {layer.nl}x{layer.na}"]
        lines.append(
            f"{layer.index:>3}{str(layer.from_index):>18}{layer.repeats:>3}{count_parameters(layer):>10,}  "
            f"{layer.block_name:<14}{args}"
        )
    return "\n".join(lines)


def summary(model: Model, img_size: int = 640) -> str:
    """Layer table plus a one-line total: layers, parameters, GFLOPs at img_size."""
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    total = (
        f"{model.yaml.get('yaml_file', 'model')} ({'fused' if model.deploy else 'training form'}): "
        f"{len(list(model.modules()))} modules, {count_parameters(model):,} parameters, "
        f"{count_gflops(model, img_size):.1f} GFLOPs at {img_size}, {batch_norms} BatchNorm layers"
    )
    return f"{layer_table(model)}\n{total}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print a model's layers, parameters and GFLOPs.")
    parser.add_argument("--cfg", default="repyolov5s.yaml", help="model YAML path or name under models/")
    parser.add_argument("--nc", type=int, default=None, help="override the number of classes")
    parser.add_argument("--img", "--img-size", dest="img_size", type=int, default=640, help="image size")
    return parser.parse_args(argv)


def run(cfg: str = "repyolov5s.yaml", nc: int | None = None, img_size: int = 640) -> Model:
    """Print the summary before and after re-parameterization; returns the fused model."""
    model = Model(cfg, nc=nc)
    print(summary(model, img_size))
    model.reparameterize()
    print("\nAfter reparameterize():")
    print(summary(model, img_size))
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0, or 2 after printing the one-sentence error of an unusable model YAML."""
    args = parse_args(argv)
    try:
        run(args.cfg, args.nc, args.img_size)
    except ModelConfigError as error:
        print(f"models.yolo: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
