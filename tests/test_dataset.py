"""Data YAMLs, the scan (every kind of bad input reported and skipped), the label cache, the Dataset
pipeline end to end (boxes stay on their objects) and the DataLoader batch format."""

import json
import logging
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers import color_mask, draw_rectangles, iou, mask_box
from utils.boxes import box_normxywh_to_xyxy, scale_boxes_to_original
from utils.data.config import image_files_from_sources, load_data_config
from utils.data.dataset import LoadedDataset, LoaderConfig, create_dataloader, epoch_repeats
from utils.data.labels import CACHE_VERSION, label_file_for
from utils.errors import ConfigError
from utils.evaluation.plots import plot_batch, plot_labels
from utils.hyp import Hyp
from utils.train.options import TrainOptions


def write_sample(root, name, height, width, boxes, split="train", first_class=0, suffix=".png"):
    """Write images/<split>/<name><suffix> with colored rectangles and its YOLO label file."""
    img, labels = draw_rectangles(height, width, boxes, first_class)
    image_file = Path(root) / "images" / split / f"{name}{suffix}"
    image_file.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_file), img)
    label_file = Path(label_file_for(image_file))
    label_file.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        f"{int(c)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}"
        for c, x1, y1, x2, y2 in labels
    ]
    label_file.write_text("\n".join(rows) + "\n")
    return image_file, label_file


@pytest.fixture
def rect_dataset(tmp_path):
    """Six 96-128 px images with three rectangles each (classes 0-11 spread over them)."""
    layouts = [
        [(5, 5, 35, 30), (50, 40, 90, 90), (10, 60, 30, 85)],
        [(2, 2, 40, 40), (60, 10, 94, 60), (45, 50, 58, 70)],
    ]
    for i in range(6):
        height, width = (96, 128) if i % 2 else (128, 96)
        write_sample(tmp_path, f"im{i}", height, width, layouts[i % 2], first_class=3 * (i % 4))
    return tmp_path


def test_label_file_for():
    assert label_file_for("/d/images/train/a.jpg") == "/d/labels/train/a.txt"
    assert label_file_for("/images/x/images/b.PNG") == "/images/x/labels/b.txt"


def test_data_yaml_variants(tmp_path, rect_dataset):
    root = rect_dataset
    files = sorted((root / "images" / "train").glob("*.png"))
    (root / "list.txt").write_text("\n".join(f"images/train/{f.name}" for f in files[:3]) + "\n")
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/train\nval: [list.txt, images/train/{files[4].name}]\n"
        "names: {0: a, 1: b, 2: c, 3: d, 4: e, 5: f, 6: g, 7: h, 8: i, 9: j, 10: k, 11: l}\n"
    )
    config = load_data_config(root / "data.yaml")
    assert config["nc"] == 12 and config["names"][:2] == ["a", "b"] and config["test"] is None
    assert len(image_files_from_sources(config["train"])) == 6
    assert len(image_files_from_sources(config["val"])) == 4
    (root / "rel.yaml").write_text(
        "train: images/train\nval: list.txt\nnc: 2\n"
    )  # no path: relative to the YAML
    config = load_data_config(root / "rel.yaml")
    assert config["names"] == ["class0", "class1"] and len(image_files_from_sources(config["val"])) == 3
    (root / "bad.yaml").write_text("train: images/train\nval: images/train\nnc: 3\nnames: [a, b]\n")
    with pytest.raises(ValueError, match="bad.yaml: nc is 3 but 2 names"):
        load_data_config(root / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        load_data_config(root / "missing.yaml")
    with pytest.raises(FileNotFoundError, match="fix the path in the data YAML"):
        image_files_from_sources([root / "nowhere"])


def _write_bad_inputs(root):
    """One file per kind of bad input, plus good images and backgrounds. -> {stem: reason fragment}."""
    write_sample(root, "good", 64, 64, [(5, 5, 30, 30)])
    write_sample(root, "dup", 64, 64, [(5, 5, 30, 30)])
    dup_label = Path(label_file_for(root / "images/train/dup.png"))
    dup_label.write_text(dup_label.read_text() * 2)
    write_sample(root, "empty", 64, 64, [])  # empty label file: background
    cv2.imwrite(str(root / "images/train/nolabel.png"), np.zeros((64, 64, 3), np.uint8))  # no label file
    bad = {}
    image_file, _ = write_sample(root, "truncated", 64, 64, [(5, 5, 30, 30)], suffix=".jpg")
    data = image_file.read_bytes()
    image_file.write_bytes(data[: len(data) // 2])
    bad["truncated"] = "truncated JPEG"
    image_file, _ = write_sample(root, "garbage", 64, 64, [(5, 5, 30, 30)], suffix=".jpg")
    image_file.write_bytes(b"not an image at all")
    bad["garbage"] = "unreadable image"
    write_sample(root, "tiny", 8, 8, [(1, 1, 5, 5)])
    bad["tiny"] = "only 8x8 px"
    cases = {
        "fourvalues": ("0 0.5 0.5 0.2\n", "has 4 values, expected 5"),
        "outside": ("0 0.5 0.5 0.2 0.2\n1 1.4 0.5 0.2 0.2\n", "row 2 has coordinates outside [0, 1]"),
        "bigclass": ("7 0.5 0.5 0.2 0.2\n", "class id 7 but the data YAML says nc=3"),
        "negclass": ("-1 0.5 0.5 0.2 0.2\n", "expected an integer >= 0"),
        "text": ("0 a b c d\n", "non-numeric"),
    }
    for stem, (rows, reason) in cases.items():
        _, label_file = write_sample(root, stem, 64, 64, [(5, 5, 30, 30)])
        label_file.write_text(rows)
        bad[stem] = reason
    return bad


def test_every_bad_input_is_reported_and_skipped(tmp_path, caplog):
    bad = _write_bad_inputs(tmp_path)
    with caplog.at_level(logging.INFO):
        dataset = LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=64, nc=3, prefix="train: "))
    kept = {Path(f).stem for f in dataset.image_files}
    assert kept == {"good", "dup", "empty", "nolabel"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for stem, reason in bad.items():
        matching = [w for w in warnings if f"{stem}." in w]
        assert len(matching) == 1 and reason in matching[0], (stem, matching)
    assert any("dup.txt: 1 duplicate label row(s) removed" in w for w in warnings)
    assert (
        len(dataset.labels[dataset.image_files.index(str((tmp_path / "images/train/dup.png").resolve()))])
        == 1
    )
    summary = [r.getMessage() for r in caplog.records if "backgrounds" in r.getMessage()]
    assert summary == [f"train: 12 images, 2 backgrounds, {len(bad)} corrupt (see warnings)"]


def test_nothing_usable_is_one_clear_error(tmp_path):
    image_file, _ = write_sample(tmp_path, "only", 64, 64, [(5, 5, 30, 30)], suffix=".jpg")
    image_file.write_bytes(b"broken")
    with pytest.raises(ValueError, match="no usable images .* fix or remove those files"):
        LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=64))
    with pytest.raises(ValueError, match="no images"):
        LoadedDataset(tmp_path / "labels/train", LoaderConfig(img_size=64))


def test_cache_is_json_and_rebuilt_when_a_file_changes(rect_dataset, caplog):
    images = rect_dataset / "images/train"
    LoadedDataset(images, LoaderConfig(img_size=64))
    cache_file = rect_dataset / "labels/train.cache.json"
    assert json.loads(cache_file.read_text())["version"] == CACHE_VERSION
    with caplog.at_level(logging.INFO):
        LoadedDataset(images, LoaderConfig(img_size=64))
    assert "labels cached in" in caplog.text
    label_file = rect_dataset / "labels/train/im0.txt"
    label_file.write_text("0 0.5 0.5 0.25 0.25\n")
    os.utime(label_file, ns=(1, 1))  # a different mtime, whatever the clock resolution
    caplog.clear()
    with caplog.at_level(logging.INFO):
        dataset = LoadedDataset(images, LoaderConfig(img_size=64))
    assert "labels cached in" not in caplog.text
    np.testing.assert_allclose(dataset.labels[0], [[0, 0.5, 0.5, 0.25, 0.25]])


def test_training_pipeline_keeps_boxes_on_objects(rect_dataset):
    hyp = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, degrees=5, translate=0.1, scale=0.3, shear=2, flipud=0.5, fliplr=0.5)
    for mosaic in (1.0, 0.0):
        hyp.mosaic = mosaic
        dataset = LoadedDataset(
            rect_dataset / "images/train", LoaderConfig(img_size=96, hyp=hyp, augment=True, seed=1)
        )
        dataset.use_mosaic = mosaic > 0
        for index in range(len(dataset)):
            img, targets, _, _ = dataset[index]
            assert img.dtype == torch.uint8 and img.shape == (3, 96, 96)
            if not len(targets):
                continue
            bgr = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[..., ::-1])
            labels = np.concatenate(
                [targets[:, 1:2].numpy(), box_normxywh_to_xyxy(targets[:, 2:].numpy(), 96, 96)], 1
            )
            check_boxes_hold_their_color(bgr, labels)


def check_boxes_hold_their_color(img, labels, margin=3):
    """Each box tightly holds pixels of its class color (a mosaic may repeat an image: look near the box)."""
    for cls, x1, y1, x2, y2 in labels:
        x1m, y1m = max(int(x1) - margin, 0), max(int(y1) - margin, 0)
        local = np.zeros(img.shape[:2], bool)
        local[y1m : int(y2) + margin, x1m : int(x2) + margin] = True
        found = mask_box(color_mask(img, int(cls)) & local)
        assert found is not None, f"class {int(cls)}: no pixels of its color in its box"
        box = np.array([x1, y1, x2, y2])
        assert (found[:2] >= box[:2] - 2.5).all() and (found[2:] <= box[2:] + 2.5).all(), (box, found)
        assert iou(found, box) > 0.5, (box, found)


def test_dataloader_batch_format_and_rect_shapes(rect_dataset):
    loader, dataset = create_dataloader(
        rect_dataset / "images/train", LoaderConfig(img_size=64, batch_size=4, rect=True, pad=0.5, workers=0)
    )
    assert dataset.nc == 12 and dataset.shapes.shape == (6, 2)
    for images, targets, paths, shapes in loader:
        assert images.dtype == torch.uint8 and images.shape[1] == 3 and images.shape[0] == len(paths)
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        assert targets.shape[1] == 6 and set(targets[:, 0].long().tolist()) <= set(range(len(paths)))
        height, width = images.shape[2:]
        for i, (path, ((h0, w0), ratio_pad)) in enumerate(zip(paths, shapes)):
            boxes = box_normxywh_to_xyxy(targets[targets[:, 0] == i, 2:].clone(), width, height)
            original = scale_boxes_to_original(boxes, (h0, w0), ratio_pad)
            expected = dataset.labels[dataset.image_files.index(path)][:, 1:]
            expected = box_normxywh_to_xyxy(torch.from_numpy(expected), w0, h0)
            torch.testing.assert_close(original, expected, atol=0.05, rtol=0)


def test_dataloader_with_a_worker_and_ram_cache(rect_dataset, tmp_path):
    hyp = Hyp(mosaic=1.0, mixup=0.5)
    loader, dataset = create_dataloader(
        rect_dataset / "images/train",
        LoaderConfig(img_size=64, batch_size=3, hyp=hyp, augment=True, shuffle=True, workers=1, cache="ram"),
    )
    assert all(img is not None for img in dataset.images)
    images, targets, paths, shapes = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and targets.shape[1] == 6 and len(shapes) == 3
    plot_batch(images, targets, paths, tmp_path / "train_batch0.jpg", names=[f"c{i}" for i in range(12)])
    plot_labels(dataset.labels, [f"c{i}" for i in range(12)], tmp_path / "labels.jpg")
    assert cv2.imread(str(tmp_path / "train_batch0.jpg")).shape[0] > 64
    assert (tmp_path / "labels.jpg").stat().st_size > 10_000


def test_a_tiny_training_set_is_passed_over_several_times_per_epoch(rect_dataset):
    assert epoch_repeats(64, 16) == 4  # 4 batches -> 16
    assert epoch_repeats(400, 16) == epoch_repeats(600, 16) == 1  # shapes-hard, the bundled dataset
    common = dict(hyp=Hyp(mosaic=0.0), augment=True, shuffle=True)
    once, _ = create_dataloader(
        rect_dataset / "images/train", LoaderConfig(img_size=64, batch_size=2, workers=0, repeat=1, **common)
    )
    auto, dataset = create_dataloader(
        rect_dataset / "images/train", LoaderConfig(img_size=64, batch_size=2, workers=1, repeat=0, **common)
    )
    assert len(once) == 3 and len(auto) == 18  # 6 images at batch 2, passed over 6 times for 16+ batches
    seen = Counter(path for _, _, paths, _ in auto for path in paths)
    assert sorted(seen) == sorted(str(f) for f in dataset.image_files) and set(seen.values()) == {6}
    with pytest.raises(ConfigError, match="repeat is -1; it must be a whole number"):
        TrainOptions(repeat=-1).check()


def test_collate_pads_mixed_sizes():
    from utils.data.dataset import collate

    small = (torch.zeros(3, 32, 64, dtype=torch.uint8), torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5]]), "a", None)
    large = (torch.zeros(3, 64, 64, dtype=torch.uint8), torch.tensor([[0, 2, 0.5, 0.5, 0.5, 0.5]]), "b", None)
    images, targets, _, _ = collate([small, large])
    assert images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(targets[0], torch.tensor([0, 1, 0.5, 0.25, 0.5, 0.25]))
    assert targets[1, 0] == 1
