"""The bundled synthetic dataset: deterministic, valid labels, generated once, regenerated on change."""

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import yaml

from utils.data.config import load_data_config
from utils.data.dataset import LoadedDataset, LoaderConfig
from utils.data.synthetic import (
    CLASS_NAMES,
    MARKER,
    SOURCE_CLASS_NAMES,
    Scene,
    class_names,
    ensure_dataset,
    generate_dataset,
    render_image,
)
from utils.paths import ROOT

SMALL = dict(img_size=64, train_images=20, val_images=6, seed=3, min_object_size=8)
EASY_LABELS_SHA256 = "7d76327a81fc9b3a6c0ce62f602abd641ac02807a3ce387da74f3f15690c35ce"  # see the test below


def _contents(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_generation_is_deterministic(tmp_path):
    generate_dataset(tmp_path / "a", **SMALL)
    generate_dataset(tmp_path / "b", **SMALL)
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len(list((tmp_path / "a/images/train").glob("*.jpg"))) == 20


def test_labels_are_valid_and_backgrounds_present(tmp_path):
    generate_dataset(tmp_path, **dict(SMALL, train_images=40))
    label_files = sorted((tmp_path / "labels/train").glob("*.txt"))
    rows = [np.array(f.read_text().split(), dtype=float).reshape(-1, 5) for f in label_files]
    assert sum(len(r) == 0 for r in rows) == 4  # exactly 10% backgrounds
    labels = np.concatenate(rows)
    assert set(labels[:, 0].astype(int)) <= set(range(len(CLASS_NAMES)))
    assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all()
    x1, x2 = labels[:, 1] - labels[:, 3] / 2, labels[:, 1] + labels[:, 3] / 2
    assert (x1 >= -1e-6).all() and (x2 <= 1 + 1e-6).all()  # objects lie inside the image
    assert max(len(r) for r in rows) <= 6


def test_render_image_sizes():
    img, labels = render_image(np.random.default_rng(0), 96, 64, Scene(max_objects=6))
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and 1 <= len(labels) <= 6
    img, labels = render_image(np.random.default_rng(0), 64, 64, background=True)
    assert len(labels) == 0


def test_ensure_dataset_generates_once_and_on_change(tmp_path):
    root = ensure_dataset(tmp_path / "shapes", **SMALL)
    marker_time = (root / MARKER).stat().st_mtime_ns
    ensure_dataset(root, **SMALL)
    assert (root / MARKER).stat().st_mtime_ns == marker_time  # complete: not regenerated
    ensure_dataset(root, **dict(SMALL, train_images=10))
    assert len(list((root / "images/train").glob("*.jpg"))) == 10
    assert not list(tmp_path.glob(".shapes.*"))  # no temporary folders left behind


def _ensure_in_process(root):
    ensure_dataset(root, **SMALL)


def test_ensure_dataset_in_parallel_processes(tmp_path):
    root = tmp_path / "shapes"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_ensure_in_process, args=(root,)) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert all(p.exitcode == 0 for p in processes)
    assert len(list((root / "images/train").glob("*.jpg"))) == 20 and not list(tmp_path.glob(".shapes.*"))


def test_data_yaml_with_generate_block(tmp_path):
    (tmp_path / "tiny.yaml").write_text(
        "path: gen\ntrain: images/train\nval: images/val\nnames: [circle, square, triangle, star, cross]\n"
        "generate: {img_size: 64, train_images: 12, val_images: 4, min_object_size: 8}\n"
        "defaults: {img_size: 64, epochs: 1}\n"
    )
    config = load_data_config(tmp_path / "tiny.yaml")
    assert config["path"] == str(tmp_path / "gen") and config["defaults"]["epochs"] == 1
    dataset = LoadedDataset(config["val"], LoaderConfig(img_size=64, nc=config["nc"]))
    assert len(dataset) == 4 and dataset.shapes.tolist() == [[64, 64]] * 4


def test_bundled_config_points_at_data_shapes():
    raw = yaml.safe_load((ROOT / "data/shapes.yaml").read_text())
    assert raw["path"] == "shapes" and raw["nc"] == len(CLASS_NAMES) == len(raw["names"])
    assert {"img_size", "epochs", "batch_size", "hyp"} <= set(raw["defaults"])


def test_easy_dataset_is_what_it_was_before_the_scene_options(tmp_path):
    """Reference values from the generator before Scene existed: the label rows exactly (they follow the
    whole random sequence), and the mean pixel of rendered images (loosely: drawing may differ by a
    level between OpenCV builds)."""
    generate_dataset(tmp_path, img_size=96, train_images=8, val_images=3, seed=0)
    text = b"".join(p.read_bytes() for p in sorted((tmp_path / "labels").rglob("*.txt")))
    assert hashlib.sha256(text).hexdigest() == EASY_LABELS_SHA256
    means = [[102.67, 114.44, 119.32], [86.32, 97.25, 105.68], [151.03, 131.85, 108.99]]
    for i, expected in enumerate(means):
        image, _ = render_image(np.random.default_rng([0, 0, i]), 96, 96)
        assert image.reshape(-1, 3).mean(0) == pytest.approx(expected, abs=0.5)


def test_a_marker_written_before_the_scene_options_still_counts(tmp_path):
    root = ensure_dataset(tmp_path / "shapes", **SMALL)
    marker = json.loads((root / MARKER).read_text())
    for key in ("color_families", "max_occlusion", "max_decoys"):
        del marker["params"][key]
    (root / MARKER).write_text(json.dumps(marker))
    marker_time = (root / MARKER).stat().st_mtime_ns
    ensure_dataset(root, **SMALL)
    assert (root / MARKER).stat().st_mtime_ns == marker_time  # not regenerated
    ensure_dataset(root, **dict(SMALL, max_decoys=2))
    assert json.loads((root / MARKER).read_text())["params"]["max_decoys"] == 2


def test_hard_dataset_is_deterministic_with_ten_classes_in_its_own_folder(tmp_path):
    raw = yaml.safe_load((ROOT / "data/shapes-hard.yaml").read_text())
    assert raw["path"] == "shapes-hard" and raw["nc"] == 10 and raw["names"] == class_names(2)
    assert {"img_size", "epochs", "batch_size", "hyp"} <= set(raw["defaults"])
    params = dict(raw["generate"], train_images=24, val_images=4)
    generate_dataset(tmp_path / "a", **params)
    generate_dataset(tmp_path / "b", **params)
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    rows = [
        np.array(f.read_text().split(), dtype=float).reshape(-1, 5)
        for f in (tmp_path / "a/labels/train").glob("*")
    ]
    labels = np.concatenate(rows)
    assert set(labels[:, 0].astype(int)) == set(range(10)) and max(len(r) for r in rows) > 6
    assert (labels[:, 3:] * raw["generate"]["img_size"]).max(1).min() < 10  # objects down to a few pixels
    assert json.loads((tmp_path / "a" / MARKER).read_text())["names"] == raw["names"]
    assert class_names(1) == CLASS_NAMES and class_names(2)[5] == "green-circle"


def test_the_small_hard_dataset_is_the_first_images_of_the_hard_one(tmp_path):
    hard = yaml.safe_load((ROOT / "data/shapes-hard.yaml").read_text())
    small = yaml.safe_load((ROOT / "data/shapes-hard-64.yaml").read_text())
    assert small["path"] == "shapes-hard-64" and small["generate"]["train_images"] == 64
    assert {k: v for k, v in small.items() if k not in ("path", "generate")} == {
        k: v for k, v in hard.items() if k not in ("path", "generate")
    }
    assert dict(small["generate"], train_images=400) == hard["generate"]
    generate_dataset(tmp_path / "few", **dict(hard["generate"], train_images=6, val_images=2))
    generate_dataset(tmp_path / "more", **dict(hard["generate"], train_images=9, val_images=2))
    few, more = _contents(tmp_path / "few"), _contents(tmp_path / "more")
    files = [k for k in few if k.parts[0] in ("images", "labels")]
    assert len(files) == 16 and all(more[k] == few[k] for k in files)  # the first 6 train, both val


def test_the_pretraining_source_has_other_classes_in_the_same_world(tmp_path):
    source = yaml.safe_load((ROOT / "data/shapes-source.yaml").read_text())
    hard = yaml.safe_load((ROOT / "data/shapes-hard.yaml").read_text())
    assert source["names"] == class_names(1, shape_set=1) == SOURCE_CLASS_NAMES
    assert not set(source["names"]) & set(hard["names"]) and source["nc"] != hard["nc"]
    same_world = ("img_size", "max_objects", "min_object_size", "max_object_fraction", "max_occlusion")
    assert all(source["generate"][key] == hard["generate"][key] for key in same_world)
    params = dict(source["generate"], train_images=6, val_images=2)
    generate_dataset(tmp_path / "a", **params)
    generate_dataset(tmp_path / "b", **params)
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    generate_dataset(tmp_path / "target", **dict(params, shape_set=0))  # the same draws, other shapes
    image = Path("images/train/train_00001.jpg")
    assert a[image] != _contents(tmp_path / "target")[image]
