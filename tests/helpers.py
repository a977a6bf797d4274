"""Shared test helpers: drawn test images with known boxes, tiny models, checkpoints and datasets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from models.yolo import Model, load_model_yaml
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.synthetic import generate_dataset
from utils.paths import ROOT

# --- images with rectangles of known colors (augmentation and dataset tests) -------------------------

# Distinct saturated BGR colors; class i is drawn in COLORS[i].
COLORS = np.array(
    [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
        [255, 128, 0], [128, 0, 255], [0, 128, 255], [255, 0, 128], [128, 255, 0], [0, 255, 128],
    ],
    dtype=np.uint8,
)  # fmt: skip
BACKGROUND = 30


def draw_rectangles(height, width, boxes_xyxy, first_class=0):
    """Image with filled rectangles and their (n, 5) pixel labels (class, x1, y1, x2, y2)."""
    img = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    labels = []
    for k, (x1, y1, x2, y2) in enumerate(boxes_xyxy):
        cls = first_class + k
        img[y1:y2, x1:x2] = COLORS[cls]
        labels.append([cls, x1, y1, x2, y2])
    return img, np.array(labels, dtype=np.float64).reshape(-1, 5)


def color_mask(img, cls, tolerance=60):
    return np.abs(img.astype(int) - COLORS[cls].astype(int)).max(-1) < tolerance


def mask_box(mask):
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def iou(a, b):
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- tiny models and checkpoints (convert, export, detect tests) ------------------------------------

NAMES = ["circle", "square", "triangle"]
# test_val.py's hand-made dataset and the untrained checkpoint it is scored with (conftest.py)
BOX_BAR_NAMES = ["box", "bar"]


def randomize_batch_norms(model: nn.Module) -> nn.Module:
    """BN statistics and affines away from their defaults, so that fusion (or a wrong load) shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def tiny_model(seed: int = 0, names: list[str] = NAMES, cfg: str = "repyolov5n.yaml") -> Model:
    """repyolov5n (or `cfg`) at half width, BN statistics and affines randomized so fusion is not trivial,
    objectness biased up so a random model still produces boxes above usual thresholds."""
    torch.manual_seed(seed)
    config, _ = load_model_yaml(cfg)
    config = dict(config, width_multiple=0.125, nc=len(names))
    model = randomize_batch_norms(Model(config))
    with torch.no_grad():
        for conv in model.detect.level_convs:
            conv.bias.view(model.detect.na, -1)[:, 4] += 6
    model.names = list(names)
    return model.eval()


def write_tiny_checkpoint(
    path: Path,
    data: dict | None = None,
    seed: int = 0,
    names: list[str] = NAMES,
    cfg: str = "repyolov5n.yaml",
) -> Path:
    extra = {"data": data} if data is not None else {}
    save_checkpoint(make_checkpoint(tiny_model(seed, names, cfg), **extra), path)
    return path


def write_images(folder: Path, count: int = 3, size: tuple[int, int] = (72, 96)) -> list[Path]:
    """Small random-texture images with a few filled shapes, (h, w) = size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        cv2.rectangle(image, (10, 10), (40, 50), (0, 0, 255), -1)
        cv2.circle(image, (size[1] - 25, size[0] - 25), 15, (255, 0, 0), -1)
        path = folder / f"img{i}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


# --- a tiny synthetic dataset and model YAML (training tests) ---------------------------------------

SHAPE_NAMES = ["circle", "square", "triangle", "star", "cross"]


def make_tiny_dataset(root, train_images=8, val_images=4):
    """A 64 px synthetic dataset and a tiny yolov5n-shaped model YAML; -> (data yaml, model yaml)."""
    generate_dataset(
        root / "shapes", img_size=64, train_images=train_images, val_images=val_images, min_object_size=8
    )
    data_yaml = root / "tiny_data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train",
                                         "val": "images/val", "names": SHAPE_NAMES}))  # fmt: skip
    config = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    config.update(depth_multiple=0.33, width_multiple=0.125)
    model_yaml = root / "tiny_model.yaml"
    model_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    return data_yaml, model_yaml


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
