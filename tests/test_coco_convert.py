"""COCO instances JSON -> YOLO labels, on a small JSON written here."""

import json

import cv2
import numpy as np
import pytest

from utils.coco import convert_coco_json
from utils.data.dataset import LoadedDataset, LoaderConfig


def _coco_json(path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
        {"id": 3, "file_name": "empty.jpg", "width": 50, "height": 80},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [20, 10, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [180, 50, 40, 60], "area": 2400, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 200, 100], "area": 2e4, "iscrowd": 1},
        {"id": 13, "image_id": 2, "category_id": 7, "bbox": [10, 10, 0, 20], "area": 0, "iscrowd": 0},
        {"id": 14, "image_id": 2, "category_id": 7, "bbox": [25, 25, 50, 50], "area": 2500, "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def test_convert_coco_json(tmp_path):
    _coco_json(tmp_path / "instances.json")
    names = convert_coco_json(tmp_path / "instances.json", tmp_path / "labels" / "val")
    assert names == ["person", "car", "train"]
    a = np.loadtxt(tmp_path / "labels/val/a.txt", ndmin=2)
    # car: x 20..60 of 200, y 10..40 of 100; person clipped at the right edge: x 180..200, y 50..100
    np.testing.assert_allclose(a, [[1, 0.2, 0.25, 0.2, 0.3], [0, 0.95, 0.75, 0.1, 0.5]], atol=1e-6)
    b = np.loadtxt(tmp_path / "labels/val/b.txt", ndmin=2)
    np.testing.assert_allclose(b, [[2, 0.5, 0.5, 0.5, 0.5]], atol=1e-6)  # the zero-width box is dropped
    assert (tmp_path / "labels/val/empty.txt").read_text() == ""
    for info in (
        {"name": "a", "w": 200, "h": 100},
        {"name": "b", "w": 100, "h": 100},
        {"name": "empty", "w": 50, "h": 80},
    ):
        image_file = tmp_path / "images/val" / f"{info['name']}.jpg"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_file), np.zeros((info["h"], info["w"], 3), np.uint8))
    dataset = LoadedDataset(tmp_path / "images/val", LoaderConfig(img_size=64, nc=len(names)))
    assert len(dataset) == 3 and sum(len(lb) == 0 for lb in dataset.labels) == 1


def test_missing_json_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; download the annotations"):
        convert_coco_json(tmp_path / "nope.json", tmp_path / "labels")


def test_get_coco_script_dry_run(tmp_path, capsys):
    from data.scripts import get_coco

    get_coco.run(tmp_path, ("val",), dry_run=True)
    out = capsys.readouterr().out
    assert "val2017.zip" in out and "train2017.zip" not in out and "annotations_trainval2017.zip" in out
