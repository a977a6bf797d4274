"""utils/deploy/detector.py and detections.py: the Python API detect.py runs on, every input kind (arrays
RGB as in yolov5, OpenCV's with channels="bgr", tensors raw), results in original pixels, bad inputs
named. Detections' yolov5 extras (pandas, tolist, show): test_detections.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import detect
from tests.helpers import NAMES, write_images
from utils.boxes import scale_boxes_to_original
from utils.deploy.detections import describe, plural
from utils.deploy.detector import Detector
from utils.errors import ConfigError, ImageError, ImageNotFoundError
from utils.nms import non_max_suppression
from utils.paths import ROOT

SAMPLES = sorted((ROOT / "data" / "images").glob("*.jpg"))
SIZE = 96


@pytest.fixture(scope="module")
def detector(weights) -> Detector:
    return Detector(weights, device="cpu")


def saved_rows(label_file: Path) -> np.ndarray:
    return np.loadtxt(label_file, ndmin=2)  # (n, 6) class cx cy w h conf


def as_rows(xywhn: torch.Tensor) -> np.ndarray:
    return torch.cat((xywhn[:, 5:6], xywhn[:, :5]), 1).numpy()  # (n, 6) class cx cy w h conf


def test_api_equals_detect_save_txt_on_the_sample_images(weights, detector, tmp_path):
    """The API on a list of the sample images (160x160 and 256x160: two letterbox shapes, two batches)
    against detect.py on their folder, one image at a time. A random model scores many boxes alike, and a
    batch of four convolves with other rounding than a batch of one, which may swap near-equal scores at
    the NMS and max_det decisions; so the batch comparison runs with NMS off (every candidate above conf
    is a detection), and one image with the default NMS compares row for row."""
    no_nms = dict(conf_thres=0.1, iou_thres=1.0, max_det=5000)
    results = detector([str(p) for p in SAMPLES], size=SIZE, conf=0.1, iou=1.0, max_det=5000)
    detect.run(weights, ROOT / "data" / "images", img_size=SIZE, device="cpu", save_txt=True, save_conf=True,
               nosave=True, project=tmp_path, name="exp", **no_nms)  # fmt: skip
    assert len(results) == len(SAMPLES) and results.files == [str(p) for p in SAMPLES]
    for image, boxes in zip(SAMPLES, results.xywhn):
        rows, expected = saved_rows(tmp_path / "exp" / "labels" / f"{image.stem}.txt"), as_rows(boxes)
        assert rows.shape == expected.shape and len(rows) > 50, image.name
        distance = np.abs(rows[:, None, :] - expected[None, :, :]).max(
            -1
        )  # (n, n): the same rows in any order
        assert distance.min(1).max() < 1e-5 and distance.min(0).max() < 1e-5, image.name
    single = detector(str(SAMPLES[0]), size=SIZE, conf=0.1)
    detect.run(weights, SAMPLES[0], img_size=SIZE, conf_thres=0.1, device="cpu", save_txt=True,
               save_conf=True, nosave=True, project=tmp_path, name="one")  # fmt: skip
    rows, expected = (
        saved_rows(tmp_path / "one" / "labels" / f"{SAMPLES[0].stem}.txt"),
        as_rows(single.xywhn[0]),
    )
    assert rows.shape == expected.shape and len(rows) > 5
    np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_every_input_kind_gives_the_same_boxes_in_original_pixels(detector, tmp_path):
    path = write_images(tmp_path / "images", count=1, size=(72, 96))[0]
    bgr = cv2.imread(str(path))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    png = tmp_path / "same.png"  # lossless, so PIL and OpenCV decode the same pixels
    cv2.imwrite(str(png), bgr)
    pil = Image.open(png)
    gray = np.asarray(pil.convert("L"))
    rgba = np.dstack((rgb, np.full(rgb.shape[:2], 7, np.uint8)))  # the alpha channel is dropped
    inputs = [path, str(path), pil, rgb, rgba, pil.convert("L"), gray, gray[..., None]]
    results = detector(inputs, size=64, conf=0.1)
    assert results.files[:5] == [str(path), str(path), "same.png", "image3.jpg", "image4.jpg"]
    reference = results.xyxy[0]
    assert reference.shape[1] == 6 and len(reference) > 0
    for boxes in results.xyxy[1:5]:
        torch.testing.assert_close(boxes, reference)
    assert len(results.xyxy[5]) > 0  # a gray PIL image is converted to RGB
    for boxes in results.xyxy[6:]:  # a gray array is the same gray image
        torch.testing.assert_close(boxes, results.xyxy[5])
    assert (reference[:, :4] >= 0).all() and (reference[:, [0, 2]] <= 96).all()
    assert (reference[:, [1, 3]] <= 72).all() and (reference[:, [1, 3]] > 64).any()  # original pixels
    gains = torch.tensor([96, 72, 96, 72, 1, 1])
    torch.testing.assert_close(results.xyxyn[0] * gains, reference)
    torch.testing.assert_close(results.xywhn[0] * gains, results.xywh[0])
    xywh = results.xywh[0]
    torch.testing.assert_close(xywh[:, 0], (reference[:, 0] + reference[:, 2]) / 2)
    torch.testing.assert_close(xywh[:, 3], reference[:, 3] - reference[:, 1])
    assert results.names == NAMES and len(results.t) == 3 and results.input_hw[0] == (64, 64)
    single = detector(rgb, size=64, conf=0.1)  # one array, not in a list
    assert len(single) == 1 and single.xyxy[0].shape[1] == 6 and single.files == ["image0.jpg"]


def test_arrays_are_rgb_as_in_yolov5_and_opencv_frames_go_through_channels_bgr(detector, tmp_path):
    """yolov5's documented array input, cv2.imread(...)[..., ::-1], gives exactly the boxes of the file;
    the OpenCV frame itself does with channels="bgr"; and the order matters: swapped, the boxes differ."""
    path = SAMPLES[0]
    bgr = cv2.imread(str(path))
    settings = dict(size=SIZE, conf=0.1)
    reference = detector(str(path), **settings).xyxy[0]
    assert len(reference) > 0
    assert torch.equal(detector(bgr[..., ::-1], **settings).xyxy[0], reference)
    assert torch.equal(detector(bgr, channels="bgr", **settings).xyxy[0], reference)
    assert not torch.equal(detector(bgr, **settings).xyxy[0], reference)  # BGR taken as RGB: other pixels
    from_file = detector(str(path), **settings).save(tmp_path / "file")  # drawn and saved in true colours
    from_rgb = detector(bgr[..., ::-1], **settings)
    np.testing.assert_array_equal(from_rgb.images[0], bgr)
    np.testing.assert_array_equal(
        cv2.imread(str(from_file / path.name)),
        cv2.imread(str(from_rgb.save(tmp_path / "rgb") / "image0.jpg")),
    )


def test_a_tensor_gets_the_networks_raw_output_as_in_yolov5(detector):
    """A float (B, 3, H, W) RGB 0..1 batch is the network's input: its raw output comes back, which NMS and
    scaling turn into exactly the boxes of the same image as an array; other tensors are one sentence."""
    bgr = cv2.imread(str(SAMPLES[0]))
    prepared = detector.prepare(bgr, detector.input_hw(SIZE))
    batch = prepared.tensor[None].float() / 255  # (1, 3, h, w) RGB in 0..1
    raw = detector(batch, size=999, conf=0.9)  # the settings do not apply to a tensor
    assert isinstance(raw, torch.Tensor) and raw.shape[0] == 1 and raw.shape[2] == 5 + len(NAMES)
    boxes = non_max_suppression(raw, **detector.thresholds(conf=0.1))[0]
    scale_boxes_to_original(boxes[:, :4], prepared.original_hw, prepared.ratio_pad)
    torch.testing.assert_close(boxes, detector(bgr, channels="bgr", size=SIZE, conf=0.1).xyxy[0])
    assert detector(torch.cat((batch, batch))).shape == (2, *raw.shape[1:])
    cases = [
        (prepared.tensor[None], r"shape \(1, 3, 96, 96\) and dtype torch.uint8 is not a batch"),
        (batch[0], r"shape \(3, 96, 96\)"),
        (batch[:, :2], r"shape \(1, 2, 96, 96\)"),
        (batch[..., :90], "of 96x90 pixels does not fit the model's stride 32"),
        (batch * 255, r"values up to 2\d\d, not 0..1; divide it by 255"),
    ]
    for bad, message in cases:
        with pytest.raises(ImageError, match=message) as error_info:
            detector(bad)
        assert len(str(error_info.value).splitlines()) == 1


def test_print_save_and_crop_like_detect(weights, detector, tmp_path, capsys):
    paths = write_images(tmp_path / "images", count=2, size=(72, 96))
    results = detector(paths, size=64, conf=0.15)
    results.print()
    out = capsys.readouterr().out
    assert f"image 1/2 {paths[0]}: 64x64 " in out and "Speed:" in out
    assert describe(results.xyxy[0], NAMES) in out
    save_dir = results.save(tmp_path / "api")
    detect.run(weights, paths[0].parent, img_size=64, conf_thres=0.15, device="cpu", save_crop=True,
               project=tmp_path, name="cli")  # fmt: skip
    for path in paths:  # the same drawing as detect.py
        np.testing.assert_array_equal(
            cv2.imread(str(save_dir / path.name)), cv2.imread(str(tmp_path / "cli" / path.name))
        )
    crops = results.crop(save_dir=tmp_path / "api", exist_ok=True)
    assert len(crops) == sum(len(d) for d in results.xyxy)
    first = crops[0]
    assert (
        first["label"].startswith(NAMES[first["cls"]])
        and first["image"].ndim == 3
        and first["file"] == str(paths[0])
    )
    written = sorted(p.relative_to(tmp_path / "api") for p in (tmp_path / "api" / "crops").rglob("*.jpg"))
    assert written == sorted(
        p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli" / "crops").rglob("*.jpg")
    )
    assert results.save(tmp_path / "api") == tmp_path / "api2"  # a new folder unless exist_ok


def test_bad_inputs_are_one_sentence_naming_them_and_can_be_skipped(detector, tmp_path):
    good = write_images(tmp_path, count=1)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    cases = [
        (tmp_path / "missing.jpg", ImageNotFoundError, "missing.jpg does not exist"),
        (broken, ImageError, "broken.jpg cannot be read as an image"),
        (
            np.zeros((64, 64, 2), np.uint8),
            ImageError,
            r"input 1 is an array of shape \(64, 64, 2\) and dtype uint8; pass a uint8 array \(H, W, 3\) in",
        ),
        (np.zeros((64, 64, 3), np.float32), ImageError, "dtype float32; pass a uint8 array"),
        (np.zeros((0, 64, 3), np.uint8), ImageError, r"shape \(0, 64, 3\)"),
        (torch.zeros(1, 3, 64, 64), ImageError, "input 1 is a Tensor in a list; pass a batch"),
        (object(), ImageError, "input 1 is a object; pass an image path"),
        ("https://example.com/a.jpg", ImageError, "is a URL"),
        (tmp_path, ImageError, "is a folder, not an image"),
    ]
    for bad, error_type, message in cases:
        with pytest.raises(error_type, match=message) as error_info:
            detector([good, bad], size=64)
        assert len(str(error_info.value).splitlines()) == 1
    assert issubclass(ImageNotFoundError, FileNotFoundError) and issubclass(ImageError, ValueError)
    results = detector([tmp_path / "missing.jpg", good, broken], size=64, errors="skip")
    assert results.files == [str(good)] and len(results.xyxy) == 1
    assert [(f.index, Path(f.input).name) for f in results.failures] == [
        (0, "missing.jpg"),
        (2, "broken.jpg"),
    ]
    assert "broken.jpg" in results.failures[1].message and "skipped" in str(results)
    empty = detector([broken], size=64, errors="skip")
    assert len(empty) == 0 and len(empty.failures) == 1


def test_settings_are_checked(detector):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(
        ConfigError, match=r"class indices \[99\] are out of range: this model predicts 3 classes, 0 to 2"
    ):
        detector(image, classes=[99])
    for size, named in ((-64, -64), (0, 0), ([64, -32], -32), ((64, 64, 64), r"\(64, 64, 64\)"), (6.4, 6.4)):
        with pytest.raises(ConfigError, match=f"image size {named} is not usable"):
            detector(image, size=size)
    detector.size = 0  # an attribute is checked like an argument, not taken as unset
    try:
        with pytest.raises(ConfigError, match="image size 0 is not usable"):
            detector(image)
    finally:
        detector.size = None
    with pytest.raises(ValueError, match="errors must be"):
        detector(image, errors="ignore")
    with pytest.raises(ConfigError, match="channels must be 'rgb' .* or 'bgr' .*, not 'BGR'"):
        detector(image, channels="BGR")
    detector.classes, detector.max_det = [1], 2  # yolov5-style attributes apply to every call
    try:
        kept = detector(image, size=64, conf=0.01).xyxy[0]
        assert len(kept) <= 2 and (kept[:, 5] == 1).all()
    finally:
        detector.classes, detector.max_det = None, 1000


def test_detection_line_pluralizes_class_names():
    detections = np.array(
        [[0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.7, 1], [0, 0, 2, 2, 0.6, 2]]
    )
    assert describe(detections, ["circle", "cross", "bus"]) == "2 circles, 1 cross, 1 bus"
    assert plural("cross", 2) == "crosses" and plural("box", 3) == "boxes"
    assert describe(np.zeros((0, 6)), ["circle"]) == "(no detections)"
