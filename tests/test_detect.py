"""detect.py and utils/sources.py: every source kind, outputs on disk, bad files skipped."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from tests.helpers import NAMES, write_images
from utils.data.sources import LoadSources
from utils.errors import ConfigError


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


# --- nothing lost: every file processed or named, outputs apart from each other and from the sources ---


def test_one_failing_image_never_stops_the_run(weights: Path, images, tmp_path: Path, caplog, monkeypatch):
    folder = images[0].parent
    cv2.imwrite(str(folder / "a_wide.jpg"), np.full((12, 20000, 3), 128, np.uint8))  # sorts first
    results = detect_run(weights, folder, tmp_path / "runs", save_txt=True)
    assert [Path(r["path"]).name for r in results][-2:] == ["img0.jpg", "img1.jpg"]
    if len(results) == 2:  # letterbox cannot shrink it to the network size: named, and the run goes on
        assert any("a_wide.jpg" in line and "skipping" in line for line in caplog.text.splitlines())
    import utils.deploy.detector as detector_module

    letterbox = detector_module.letterbox

    def fails_on_the_first_image(image, *args, **kwargs):
        if image.shape[:2] == (72, 96) and image[0, 0, 0] == first_pixel:
            raise RuntimeError("decoder exploded")
        return letterbox(image, *args, **kwargs)

    first_pixel = cv2.imread(str(images[0]))[0, 0, 0]
    monkeypatch.setattr(detector_module, "letterbox", fails_on_the_first_image)
    caplog.clear()
    results = detect_run(weights, images[0].parent, tmp_path / "again", save_txt=True)
    names = [Path(r["path"]).name for r in results]
    assert "img0.jpg" not in names and "img1.jpg" in names
    warnings = [
        line for line in caplog.text.splitlines() if "img0.jpg" in line and "decoder exploded" in line
    ]
    assert len(warnings) == 1


def test_same_names_in_different_folders_are_kept_apart(weights: Path, tmp_path: Path, monkeypatch):
    data = tmp_path / "data"
    write_images(data / "x", count=2, size=(72, 96))
    write_images(data / "y", count=2, size=(96, 64))
    write_images(data / "y" / "deeper", count=1, size=(64, 64))
    (data / "y" / "img1.jpg").unlink()
    monkeypatch.chdir(tmp_path)
    source = "data/**/im*[01].jpg"
    results = detect_run(weights, source, tmp_path / "runs", save_txt=True, save_crop=True)
    save_dir = tmp_path / "runs" / "exp"
    relative = ["x/img0.jpg", "x/img1.jpg", "y/deeper/img0.jpg", "y/img0.jpg"]
    assert sorted(str(Path(r["path"]).relative_to("data")) for r in results) == relative
    for result in results:
        name = Path(result["path"]).relative_to("data")
        assert cv2.imread(str(save_dir / name)).shape[:2] == result["shape"], name
        rows = np.loadtxt(save_dir / "labels" / name.with_suffix(".txt"), ndmin=2)
        assert len(rows) == len(result["detections"]), name
    crops = {p.relative_to(save_dir / "crops").parts[1:] for p in (save_dir / "crops").rglob("*.jpg")}
    assert {c[0] for c in crops} == {"x", "y"} and any(c[:2] == ("y", "deeper") for c in crops)


def test_outputs_never_replace_the_source_images(weights: Path, images, tmp_path: Path, capsys):
    folder = images[0].parent
    before = {p: p.read_bytes() for p in images}
    with pytest.raises(ConfigError, match="would replace the source image"):
        detect.run(weights, folder, img_size=64, device="cpu", project=folder.parent, name=folder.name,
                   exist_ok=True)  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--weights", str(weights), "--source", str(folder), "--img", "64", "--project",
                     str(folder.parent), "--name", folder.name, "--exist-ok"])  # fmt: skip
    assert exit_info.value.code == 2 and "detect.py: writing" in capsys.readouterr().err
    labels = folder / "exp" / "labels"  # a source inside the label folder it would be written to
    labels.mkdir(parents=True)
    (labels / "img0.jpg").write_bytes(before[images[0]])
    with pytest.raises(ConfigError, match="lies in the output folder"):
        detect.run(weights, f"{folder}/**/*.jpg", img_size=64, device="cpu", project=folder, name="exp",
                   exist_ok=True, save_txt=True)  # fmt: skip
    assert {p: p.read_bytes() for p in images} == before
    detect_run(weights, folder, tmp_path / "elsewhere", nosave=True, save_txt=True)  # the sources are fine


def test_truncated_jpeg_is_named_in_a_warning(weights: Path, images, caplog):
    data = images[0].read_bytes()
    cut = images[0].with_name("cut.jpg")
    cut.write_bytes(data[: len(data) * 2 // 3])
    results = detect_run(weights, images[0].parent, images[0].parent.parent / "runs")
    assert any("cut.jpg is a truncated JPEG" in line for line in caplog.text.splitlines())
    assert "cut.jpg" in [Path(r["path"]).name for r in results]  # what decodes is still searched


def test_unreadable_video_is_named_and_nothing_readable_exits_2(
    weights: Path, images, tmp_path, caplog, capsys
):
    broken = images[0].parent / "clip.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    results = detect_run(weights, images[0].parent, tmp_path / "runs")
    assert len(results) == 2 and any("clip.mp4" in line for line in caplog.text.splitlines())
    only = tmp_path / "videos"
    only.mkdir()
    broken.rename(only / "clip.mp4")
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--weights", str(weights), "--source", str(only), "--project", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("clip.mp4" in line and "cannot be read as a video" in line for line in err)
    assert err[-1].startswith("detect.py: none of the 1 file(s)") and "could be read" in err[-1]
