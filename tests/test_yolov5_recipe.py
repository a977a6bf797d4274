"""A yolov5 user's recipe, run as written: the commands of yolov5's README and training tutorial, as
subprocesses from the repository root, on tiny sizes and local files. A yolov5-format checkpoint (written
from our own model by tests/yolov5_format.py) as --weights, a dataset YAML in yolov5's own layout (`path:`,
`train:`, `val:` and a `names:` mapping) over a polygon-labelled copy of the tiny shapes dataset, then train
with --cache --single-cls --rect, val with --augment --save-json --save-conf --save-txt, detect with
--save-txt --save-conf --save-crop. Each must finish with exit status 0 and leave its outputs where yolov5
puts them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import SHAPE_NAMES, make_tiny_dataset, tiny_model
from tests.yolov5_format import write_yolov5_checkpoint
from utils.paths import ROOT


def as_polygons(label_file: Path) -> None:
    """Rewrite each `class cx cy w h` row as the 4-corner polygon of its box, as a segment export has it."""
    rows = []
    for line in label_file.read_text().splitlines():
        cls, cx, cy, w, h = line.split()
        x1, y1, x2, y2 = (float(cx) - float(w) / 2, float(cy) - float(h) / 2,
                          float(cx) + float(w) / 2, float(cy) + float(h) / 2)  # fmt: skip
        rows.append(f"{cls} {x1:.6f} {y1:.6f} {x2:.6f} {y1:.6f} {x2:.6f} {y2:.6f} {x1:.6f} {y2:.6f}")
    label_file.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> dict[str, Path]:
    """{"data": a yolov5-layout dataset YAML over polygon labels, "weights": a yolov5-format yolov5n
    checkpoint, "runs": the project folder}."""
    root = tmp_path_factory.mktemp("recipe")
    make_tiny_dataset(root)
    dataset = root / "datasets" / "shapes128"  # where yolov5's tutorial keeps coco128, beside the repo
    shutil.move(root / "shapes", dataset)
    for label_file in (dataset / "labels").rglob("*.txt"):
        as_polygons(label_file)
    data = root / "shapes128.yaml"
    data.write_text(yaml.safe_dump({
        "path": str(dataset), "train": "images/train", "val": "images/val",
        "names": dict(enumerate(SHAPE_NAMES)),
    }))  # fmt: skip
    weights = write_yolov5_checkpoint(tiny_model(cfg="yolov5n.yaml"), root / "yolov5n.pt")
    return {"data": data, "weights": weights, "runs": root / "runs"}


def run(*command: str) -> None:
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_train_val_detect_as_yolov5s_tutorial_writes_them(recipe):
    data, weights, runs = recipe["data"], recipe["weights"], recipe["runs"]
    run(
        "train.py",
        "--img",
        "64",
        "--batch",
        "4",
        "--epochs",
        "1",
        "--data",
        str(data),
        "--weights",
        str(weights),
        "--cache",
        "--single-cls",
        "--rect",
        "--workers",
        "0",
        "--project",
        str(runs / "train"),
    )
    exp = runs / "train" / "exp"
    for name in ("weights/best.pt", "weights/last.pt", "results.csv", "opt.yaml", "hyp.yaml"):
        assert (exp / name).is_file(), name
    best = exp / "weights" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["names"] == ["item"]

    run(
        "val.py",
        "--weights",
        str(best),
        "--data",
        str(data),
        "--img",
        "64",
        "--single-cls",
        "--augment",
        "--save-json",
        "--save-conf",
        "--save-txt",
        "--conf-thres",
        "0.001",
        "--project",
        str(runs / "val"),
    )
    val_dir = runs / "val" / "exp"
    assert json.loads((val_dir / "best_predictions.json").read_text()) is not None
    rows = [
        line.split() for path in (val_dir / "labels").glob("*.txt") for line in path.read_text().splitlines()
    ]
    assert rows and {len(row) for row in rows} == {6}  # class, box, confidence

    images = data.parent / "datasets" / "shapes128" / "images" / "val"
    run(
        "detect.py",
        "--weights",
        str(best),
        "--source",
        str(images),
        "--img",
        "64",
        "--conf-thres",
        "0.001",
        "--max-det",
        "3",
        "--save-txt",
        "--save-conf",
        "--save-crop",
        "--project",
        str(runs / "detect"),
    )
    detect_dir = runs / "detect" / "exp"
    for image in images.iterdir():
        assert (detect_dir / image.name).is_file()
        assert (detect_dir / "labels" / f"{image.stem}.txt").is_file()
    assert list((detect_dir / "crops" / "item").glob("*.jpg"))
