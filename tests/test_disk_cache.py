"""cache="disk" (train.py --cache disk): decoded, resized images stored once as .npy beside the images,
reused while the image is unchanged, rewritten when it changes; the same batches, labels and mAP."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from tests.helpers import draw_rectangles, make_tiny_dataset
from utils.data import dataset as dataset_module
from utils.data.dataset import LoadedDataset, LoaderConfig
from utils.data.labels import label_file_for

IMG_SIZE = 64


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Three labelled images larger than IMG_SIZE (so they are resized), of different shapes."""
    folder = tmp_path / "images" / "train"
    folder.mkdir(parents=True)
    for i, (height, width) in enumerate([(100, 80), (90, 120), (128, 128)]):
        image, labels = draw_rectangles(height, width, [(10, 12, 40, 50)], first_class=i)
        cv2.imwrite(str(folder / f"im{i}.png"), image)
        label_file = Path(label_file_for(folder / f"im{i}.png"))
        label_file.parent.mkdir(parents=True, exist_ok=True)
        c, x1, y1, x2, y2 = labels[0]
        label_file.write_text(f"{int(c)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                              f"{(x2 - x1) / width} {(y2 - y1) / height}\n")  # fmt: skip
    return folder


def items(dataset: LoadedDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(dataset[i][0].numpy(), dataset[i][1].numpy()) for i in range(len(dataset))]


def assert_same_items(dataset: LoadedDataset, reference: LoadedDataset | list) -> None:
    expected = reference if isinstance(reference, list) else items(reference)
    assert len(dataset) == len(expected)
    for (image, targets), (expected_image, expected_targets) in zip(items(dataset), expected):
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(targets, expected_targets)


def test_written_once_beside_the_images_and_reused(image_dir, monkeypatch):
    plain = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE))
    cached = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk"))
    files = sorted(image_dir.glob("*.npy"))
    assert [f.name for f in files] == [f"im{i}.png.{IMG_SIZE}-area.npy" for i in range(3)]
    assert not list(image_dir.glob(".*"))  # no temporary files left behind
    expected = items(plain)
    assert_same_items(cached, expected)
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although its cache file is up to date")

    with monkeypatch.context() as patch:
        patch.setattr(dataset_module.cv2, "imread", no_decoding)
        again = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk"))
        assert_same_items(again, expected)
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == stamps  # not rewritten
    # augment=True resizes with another interpolation: other files
    augmented = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk", augment=True))
    assert len(list(image_dir.glob(f"*.{IMG_SIZE}-linear.npy"))) == 3 and augmented.cache_files[0].is_file()


def test_a_changed_image_is_cached_again_and_a_foreign_file_ignored(image_dir):
    LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk"))
    changed = image_dir / "im1.png"
    cv2.imwrite(str(changed), np.full((90, 120, 3), 200, np.uint8))
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time
    untouched = image_dir / f"im0.png.{IMG_SIZE}-area.npy"
    before = untouched.stat().st_ino
    cached = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk"))
    assert untouched.stat().st_ino == before
    index = cached.image_files.index(str(changed.resolve()))
    assert (cached.load_image(index)[0] == 200).all()  # the new pixels, not the old cache
    wrong = image_dir / f"im2.png.{IMG_SIZE}-area.npy"  # a file of the wrong shape with the right stamp
    np.save(wrong, np.zeros((5, 5, 3), np.uint8))
    source = (image_dir / "im2.png").stat()
    os.utime(wrong, ns=(source.st_atime_ns, source.st_mtime_ns))
    index = cached.image_files.index(str((image_dir / "im2.png").resolve()))
    np.testing.assert_array_equal(
        cached.load_image(index)[0],
        LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE)).load_image(index)[0],
    )


def test_an_unwritable_folder_falls_back_to_decoding(image_dir, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    cached = LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE, cache="disk"))
    assert "could not write 3 image cache file(s)" in caplog.text and "im0.png" in caplog.text
    assert not list(image_dir.glob("*.npy")) and not list(image_dir.glob(".*"))
    assert_same_items(cached, LoadedDataset(image_dir, LoaderConfig(img_size=IMG_SIZE)))


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def test_training_with_the_disk_cache_gives_the_same_labels_rows_and_map(tmp_path):
    torch.set_num_threads(1)
    data_yaml, model_yaml = make_tiny_dataset(tmp_path, train_images=4, val_images=2)
    common = dict(cfg=str(model_yaml), data=str(data_yaml), epochs=1, batch_size=4, img_size=IMG_SIZE,
                  device="cpu", workers=0, project=str(tmp_path / "runs"), tensorboard=False,
                  repeat=1)  # fmt: skip
    plain = train.run(name="plain", **common)
    cached = train.run(name="cached", cache="disk", **common)
    assert train.parse_args(["--cache", "disk"]).cache == "disk"
    assert len(list((tmp_path / "shapes" / "images" / "train").glob("*.npy"))) == 4
    assert read_rows(cached["save_dir"]) == read_rows(plain["save_dir"])
    assert cached["final"]["mAP50_95"] == plain["final"]["mAP50_95"]
    assert cached["final"]["mAP50"] == plain["final"]["mAP50"]
    images = tmp_path / "shapes" / "images" / "train"
    labels = LoadedDataset(images, LoaderConfig(img_size=IMG_SIZE, cache="disk")).labels
    plain_labels = LoadedDataset(images, LoaderConfig(img_size=IMG_SIZE)).labels
    assert all(np.array_equal(a, b) for a, b in zip(labels, plain_labels))
