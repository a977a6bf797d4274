"""detect.py and utils/sources.py: every source kind, outputs on disk, bad files skipped."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from tests.helpers import NAMES, write_images, write_tiny_checkpoint
from utils.data.sources import LoadSources


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return write_images(tmp_path / "images", count=2)


def detect_run(weights: Path, source, project: Path, **kwargs) -> list[dict]:
    kwargs = {"img_size": 64, "conf_thres": 0.1, "max_det": 10, "device": "cpu", **kwargs}
    return detect.run(weights, source, project=project, name="exp", exist_ok=True, **kwargs)


def test_sources_folder_glob_txt_and_bad_file(tmp_path: Path, images, caplog):
    folder = images[0].parent
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.md").write_text("ignored: not an image suffix")
    items = list(LoadSources(folder))
    assert [Path(i.path).name for i in items] == ["img0.jpg", "img1.jpg"]
    assert items[0].index == 2 and items[0].count == 3  # broken.jpg sorts first and is skipped
    assert "broken.jpg" in caplog.text
    assert [Path(i.path).name for i in LoadSources(str(folder / "img*.jpg"))] == ["img0.jpg", "img1.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"images/img1.jpg\n{images[0]}\n")
    assert [Path(i.path).name for i in LoadSources(listing)] == ["img1.jpg", "img0.jpg"]
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        LoadSources(tmp_path / "missing_dir")


def test_detect_folder_writes_images_labels_crops(weights: Path, images, tmp_path: Path, caplog):
    caplog.set_level("INFO")
    (images[0].parent / "broken.png").write_bytes(b"\x89PNG garbage")
    results = detect_run(
        weights, images[0].parent, tmp_path / "runs", save_txt=True, save_conf=True, save_crop=True
    )
    save_dir = tmp_path / "runs" / "exp"
    assert [Path(r["path"]).name for r in results] == ["img0.jpg", "img1.jpg"]
    assert "broken.png" in caplog.text
    assert (
        "image 2/3" in caplog.text
        and "Speed:" in caplog.text
        and f"Results saved to {save_dir}" in caplog.text
    )
    for result in results:
        detections = result["detections"]
        assert detections.shape[1] == 6 and len(detections) > 0
        height, width = result["shape"]
        assert (detections[:, [0, 2]] >= 0).all() and (detections[:, [0, 2]] <= width).all()
        assert (detections[:, [1, 3]] >= 0).all() and (detections[:, [1, 3]] <= height).all()
        name = Path(result["path"]).name
        assert cv2.imread(str(save_dir / name)).shape[:2] == (height, width)
        rows = np.loadtxt(save_dir / "labels" / f"{Path(name).stem}.txt", ndmin=2)
        assert rows.shape == (len(detections), 6)
        np.testing.assert_allclose(rows[:, 5], detections[:, 4], atol=1e-5)
        assert set(rows[:, 0].astype(int)) == set(detections[:, 5].astype(int))
        center_x = (detections[:, 0] + detections[:, 2]) / 2 / width
        np.testing.assert_allclose(rows[:, 1], center_x, atol=1e-5)
    crops = list((save_dir / "crops").rglob("*.jpg"))
    assert crops and {c.parent.name for c in crops} <= set(NAMES)


def test_detect_options_filter_and_nosave(weights: Path, images, tmp_path: Path):
    everything = detect_run(weights, images[0], tmp_path / "a", conf_thres=0.01, max_det=50)[0]["detections"]
    only = int(everything[0, 5])
    kept = detect_run(
        weights, images[0], tmp_path / "b", conf_thres=0.01, max_det=50, classes=[only], nosave=True
    )
    assert len(kept[0]["detections"]) and (kept[0]["detections"][:, 5] == only).all()
    assert not any((tmp_path / "b" / "exp").iterdir())
    agnostic = detect_run(weights, images[0], tmp_path / "c", conf_thres=0.01, max_det=50, agnostic_nms=True)
    assert len(agnostic[0]["detections"]) <= len(everything)
    one = detect_run(weights, images[0], tmp_path / "d", max_det=1, hide_labels=True, line_thickness=1)
    assert len(one[0]["detections"]) == 1


def test_detect_video(weights: Path, tmp_path: Path, caplog):
    caplog.set_level("INFO")
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    results = detect_run(weights, video, tmp_path / "runs")
    assert [r["frame"] for r in results] == [1, 2, 3]
    assert "video 1/1 (frame 3/3)" in caplog.text
    capture = cv2.VideoCapture(str(tmp_path / "runs" / "exp" / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


def test_detect_cli_parses_yolov5_flags(weights: Path, images, tmp_path: Path):
    args = detect.parse_args(
        ["--weights", str(weights), "--source", str(images[0]), "--img", "64", "--conf-thres", "0.3"]
        + ["--classes", "0", "2", "--agnostic-nms", "--save-txt", "--nosave", "--project", str(tmp_path)]
    )
    assert args.img_size == [64] and args.classes == [0, 2] and args.agnostic_nms and args.conf_thres == 0.3
    detect.main(
        ["--weights", str(weights), "--source", str(images[0]), "--img", "64", "--project", str(tmp_path)]
    )
    assert (tmp_path / "exp" / "img0.jpg").is_file()
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--weights", str(weights), "--source", str(tmp_path / "nothing.jpg")])
    assert exit_info.value.code == 2


def test_detection_line_pluralizes_class_names():
    detections = np.array(
        [[0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.7, 1], [0, 0, 2, 2, 0.6, 2]]
    )
    assert detect.describe(detections, ["circle", "cross", "bus"]) == "2 circles, 1 cross, 1 bus"
    assert detect.plural("cross", 2) == "crosses" and detect.plural("box", 3) == "boxes"
    assert detect.describe(np.zeros((0, 6)), ["circle"]) == "(no detections)"
