"""Polygon label rows (class x1 y1 x2 y2 x3 y3 ...): read with their extent as the box, checked row by row,
cached, carried through the mosaic, copy-paste and the warp; a training split without a single label
stops in one sentence; box-only data is augmented exactly as before polygons were read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

import train
from tests.helpers import BACKGROUND, COLORS, color_mask, draw_rectangles, iou, make_tiny_dataset, mask_box
from utils.data import augment
from utils.data.dataset import LoadedDataset, LoaderConfig
from utils.data.labels import CACHE_VERSION, label_file_for, scan_files
from utils.errors import DataError
from utils.hyp import Hyp

TRIANGLE = [(10, 8), (44, 20), (18, 40)]
DIAMOND = [(70, 10), (92, 30), (70, 50), (50, 30)]
PENTAGON = [(20, 60), (40, 52), (56, 66), (46, 88), (22, 86)]
ARROW = [(70, 60), (92, 70), (70, 90), (76, 72)]  # not convex


def draw_polygons(height, width, polygons, first_class=0):
    """Image with filled polygons of pixel vertices, their (n, 5) pixel labels (class and extent) and
    their segments, as utils.data.augment takes them."""
    img = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    labels, segments = [], []
    for k, points in enumerate(polygons):
        points = np.array(points, dtype=np.float64)
        cv2.fillPoly(img, [points.astype(np.int32)], COLORS[first_class + k].tolist())
        labels.append([first_class + k, *points.min(0), *points.max(0)])
        segments.append(points)
    return img, np.array(labels, dtype=np.float64).reshape(-1, 5), segments


def polygon_row(cls, points, width, height) -> str:
    return " ".join([str(cls)] + [f"{x / width:.6f} {y / height:.6f}" for x, y in points])


def write_image(root, name, img, rows, split="train") -> tuple[Path, Path]:
    image_file = Path(root) / "images" / split / f"{name}.png"
    image_file.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_file), img)
    label_file = Path(label_file_for(image_file))
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(row + "\n" for row in rows))
    return image_file, label_file


@pytest.fixture
def polygon_dataset(tmp_path):
    """Six 96x128 / 128x96 images of four polygons each, labelled as polygons (classes 0-11)."""
    layouts = [[TRIANGLE, DIAMOND, PENTAGON, ARROW], [DIAMOND, TRIANGLE, ARROW, PENTAGON]]
    for i in range(6):
        height, width = (96, 128) if i % 2 else (128, 96)
        first = 4 * (i % 3)
        img, _, _ = draw_polygons(height, width, layouts[i % 2], first)
        rows = [polygon_row(first + k, p, width, height) for k, p in enumerate(layouts[i % 2])]
        write_image(tmp_path, f"im{i}", img, rows)
    return tmp_path / "images" / "train"


def check_boxes_hold_their_polygons(img, labels, min_iou=0.75, tolerance_px=2.5):
    """Each box is the tight box of its class color's pixels (each class appears once), within a pixel or two
    (interpolation thins sharp corners)."""
    assert len(labels), "no box survived"
    for cls, *box in labels:
        found = mask_box(color_mask(img, int(cls)))
        assert found is not None, f"class {int(cls)} has a box but no visible pixels"
        box = np.array(box)
        assert np.abs(found - box).max() <= tolerance_px, f"class {int(cls)}: box {box.round(1)} vs {found}"
        assert iou(found, box) > min_iou or min(box[2] - box[0], box[3] - box[1]) < 12


# --- reading and checking polygon rows ------------------------------------------------------------


def test_polygon_rows_give_their_extent_and_keep_their_points(tmp_path):
    img, labels, _ = draw_polygons(96, 128, [TRIANGLE, DIAMOND])
    rows = [polygon_row(0, TRIANGLE, 128, 96), polygon_row(1, DIAMOND, 128, 96)]
    image_file, _ = write_image(tmp_path, "a", img, rows)
    (entry,), _ = scan_files([str(image_file)])
    assert not entry["error"]
    expected = np.concatenate(
        [labels[:, :1], (labels[:, 1:3] + labels[:, 3:]) / 2, labels[:, 3:] - labels[:, 1:3]], 1
    )
    expected[:, [1, 3]] /= 128
    expected[:, [2, 4]] /= 96
    np.testing.assert_allclose(entry["labels"], expected, atol=1e-6)
    assert [len(s) for s in entry["segments"]] == [6, 8]
    dataset = LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=128))
    np.testing.assert_allclose(dataset.segments[0][1] * (128, 96), DIAMOND, atol=1e-3)
    _, targets, _, _ = dataset[0]  # no augmentation: the box is the extent, letterboxed
    np.testing.assert_allclose(
        targets[:, 2:].numpy(), expected[:, 1:] * (1, 96 / 128, 1, 96 / 128) + (0, 16 / 128, 0, 0), atol=1e-5
    )


def test_a_file_mixing_boxes_and_polygons_reads_each_row_as_what_it_is(tmp_path):
    """yolov5 reads every row of such a file as a polygon, so its box rows become 2-point "polygons" whose
    extent is no box ((cx, cy) to (w, h)); here a box row stays its box and has no points."""
    img, _, _ = draw_polygons(96, 128, [TRIANGLE])
    box_row = "1 0.75 0.5 0.2 0.3"
    image_file, _ = write_image(tmp_path, "mixed", img, [polygon_row(0, TRIANGLE, 128, 96), box_row])
    (entry,), _ = scan_files([str(image_file)])
    assert not entry["error"]
    np.testing.assert_allclose(entry["labels"][1], [1, 0.75, 0.5, 0.2, 0.3])
    assert len(entry["segments"][0]) == 6 and entry["segments"][1] == []
    # through a mosaic the box row keeps its corner box, the polygon its points
    dataset = LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=128))
    labels, segments = dataset._pixel_labels(0, 128, 96)
    assert [len(s) for s in segments] == [3, 0]
    pieces = [(img, labels, segments)] + [(img, labels, None)] * 3
    canvas, moved, moved_segments = augment.mosaic(pieces, 128, np.random.default_rng(0))
    assert len(moved_segments) == len(moved) and sum(len(s) > 0 for s in moved_segments) >= 1


def test_box_only_files_have_no_segments(tmp_path):
    img, labels = draw_rectangles(64, 64, [(5, 5, 30, 30)])
    image_file, _ = write_image(tmp_path, "box", img, ["0 0.275 0.275 0.390625 0.390625"])
    (entry,), _ = scan_files([str(image_file)])
    assert entry["segments"] == [] and entry["labels"] == [[0, 0.275, 0.275, 0.390625, 0.390625]]
    assert LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=64)).segments == [None]


BAD_POLYGONS = {
    "odd": ("0 0.1 0.1 0.5 0.1 0.3\n", "label row 1 has 5 coordinates, an odd number"),
    "onepoint": ("0 0.5 0.5\n", "label row 1 has 3 values, expected 5 (class cx cy w h) or a polygon of 3"),
    "outside": (
        "0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.5 1.3 0.2 0.4\n",
        "label row 2 has coordinates outside [0, 1]",
    ),
    "flat": ("0 0.1 0.5 0.4 0.5 0.8 0.5\n", "label row 1 has a polygon of zero width or height"),
    "nan": ("0 0.1 0.1 nan 0.5 0.3 0.3\n", "label row 1 has a value that is not a finite number"),
    "badclass": ("0.5 0.1 0.1 0.5 0.5 0.3 0.3\n", "label row 1 has class id 0.5"),
}


def test_a_bad_polygon_row_is_named_with_its_file_and_row(tmp_path, caplog):
    img, _, _ = draw_polygons(64, 64, [TRIANGLE])
    write_image(tmp_path, "good", img, [polygon_row(0, TRIANGLE, 64, 64)])
    for stem, (rows, _) in BAD_POLYGONS.items():
        _, label_file = write_image(tmp_path, stem, img, [])
        label_file.write_text(rows)
    with caplog.at_level(logging.WARNING):
        dataset = LoadedDataset(tmp_path / "images/train", LoaderConfig(img_size=64, prefix="train: "))
    assert [Path(f).stem for f in dataset.image_files] == ["good"]
    for stem, (_, reason) in BAD_POLYGONS.items():
        label_file = str(Path(label_file_for(tmp_path / "images/train" / f"{stem}.png")).resolve())
        matching = [r.getMessage() for r in caplog.records if f"{stem}.png" in r.getMessage()]
        assert len(matching) == 1 and f"{label_file}: {reason}" in matching[0], (stem, matching)


def test_the_label_cache_keeps_segments_and_an_older_cache_is_rebuilt(polygon_dataset, caplog):
    first = LoadedDataset(polygon_dataset, LoaderConfig(img_size=64))
    cache_file = polygon_dataset.parent.parent / "labels" / "train.cache.json"
    cache = json.loads(cache_file.read_text())
    assert cache["version"] == CACHE_VERSION == 3 and len(cache["entries"][0]["segments"]) == 4
    with caplog.at_level(logging.INFO):
        again = LoadedDataset(polygon_dataset, LoaderConfig(img_size=64))
    assert "labels cached in" in caplog.text
    for a, b in zip(first.segments, again.segments):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # a cache written before polygons were read (version 2: no "segments") is scanned again, not misread
    for entry in cache["entries"]:
        del entry["segments"]
    cache_file.write_text(json.dumps(dict(cache, version=2)))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rebuilt = LoadedDataset(polygon_dataset, LoaderConfig(img_size=64))
    assert "labels cached in" not in caplog.text and all(s is not None for s in rebuilt.segments)


def test_the_disk_image_cache_gives_the_same_polygon_items(polygon_dataset):
    hyp = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, degrees=20, shear=3)
    hyp.copy_paste = 0.5
    config = dict(img_size=64, hyp=hyp, augment=True, seed=2)
    plain = LoadedDataset(polygon_dataset, LoaderConfig(**config))
    cached = LoadedDataset(polygon_dataset, LoaderConfig(cache="disk", **config))
    assert all(f is not None for f in cached.cache_files)
    for index in range(len(plain)):
        (img_a, targets_a, _, _), (img_b, targets_b, _, _) = plain[index], cached[index]
        assert np.array_equal(img_a.numpy(), img_b.numpy()) and np.array_equal(targets_a, targets_b)


# --- segments through the augmentations -----------------------------------------------------------

ROTATIONS = augment.PerspectiveRanges(degrees=35, translate=0.1, scale=0.3, shear=5, perspective=0.0005)


@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_derives_tight_boxes_from_the_warped_segments(seed):
    img, labels, segments = draw_polygons(
        128, 128, [(np.array(p) * 1.2).tolist() for p in (TRIANGLE, DIAMOND, PENTAGON, ARROW)]
    )
    out, moved, warped = augment.random_perspective(
        img, labels, np.random.default_rng(seed), ROTATIONS, segments=segments
    )
    assert len(moved) == len(warped) and len(moved)
    check_boxes_hold_their_polygons(out, moved)
    for (_, *box), points in zip(moved, warped):  # the box is the extent of the warped points in the image
        inside = points[((points >= 0) & (points <= 128)).all(1)]
        np.testing.assert_allclose(box, [*inside.min(0), *inside.max(0)])
    # the same draws without the segments: the box around the warped corner box, never tighter
    _, corner_boxes, none = augment.random_perspective(img, labels, np.random.default_rng(seed), ROTATIONS)
    assert none is None
    for cls, *box in moved:
        row = corner_boxes[corner_boxes[:, 0] == cls]
        if len(row):
            assert (row[0, 1:3] <= np.array(box[:2]) + 1e-6).all() and (
                row[0, 3:] >= np.array(box[2:]) - 1e-6
            ).all()


def test_a_segment_leaving_the_image_gives_the_box_of_its_visible_part():
    img, labels, segments = draw_polygons(200, 200, [[(90, 80), (190, 150), (90, 95)]])
    shift = augment.PerspectiveRanges(degrees=0, translate=0, scale=0)  # the center 50 x 50
    out, moved, visible = augment.random_perspective(
        img, labels, np.random.default_rng(0), shift, border=(-75, -75), segments=segments
    )
    assert out.shape[:2] == (50, 50)
    # vertices (15, 5), (115, 75), (15, 20) in the output: the visible part ends at y 39.25, its clipped
    # box at 50
    np.testing.assert_allclose(moved[0, 1:], [15, 5, 50, 39.25], atol=0.1)
    check_boxes_hold_their_polygons(out, moved, tolerance_px=1.5)
    assert ((visible[0] >= 0) & (visible[0] <= 50)).all()


def polygon_pieces():
    shapes = [(96, 96), (72, 96), (96, 64), (80, 80)]
    layouts = [[TRIANGLE, DIAMOND], [TRIANGLE, PENTAGON], [DIAMOND, ARROW], [ARROW, TRIANGLE]]
    pieces = []
    for k, ((height, width), layout) in enumerate(zip(shapes, layouts)):
        scaled = [(np.array(p) * (min(height, width) / 100)).tolist() for p in layout]
        pieces.append(draw_polygons(height, width, scaled, first_class=2 * k + (k == 3)))
    return pieces


@pytest.mark.parametrize("seed", range(6))
def test_segments_survive_the_mosaic_and_random_mosaic_equals_mosaic_then_perspective(seed):
    size, pieces = 96, polygon_pieces()
    rng = np.random.default_rng(seed)
    canvas, labels, segments = augment.mosaic(pieces, size, rng)
    assert len(segments) == len(labels)
    check_boxes_hold_their_polygons(canvas, labels)
    expected, expected_labels, expected_segments = augment.random_perspective(
        canvas, labels, rng, ROTATIONS, border=(-48, -48), segments=segments
    )
    rng = np.random.default_rng(seed)
    img, got_labels, got_segments = augment.random_mosaic(
        lambda k: pieces[k], [p[0].shape[:2] for p in pieces], size, rng, ROTATIONS
    )
    assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_allclose(got_labels, expected_labels, atol=1e-6)
    for got, want in zip(got_segments, expected_segments):
        np.testing.assert_allclose(got, want, atol=1e-6)
    if len(got_labels):
        check_boxes_hold_their_polygons(img, got_labels, min_iou=0.75)


def test_the_training_pipeline_keeps_polygon_boxes_tight_through_flips(polygon_dataset):
    hyp = Hyp(
        hsv_h=0, hsv_s=0, hsv_v=0, degrees=25, translate=0.1, scale=0.3, shear=3, flipud=0.5, fliplr=0.5
    )
    for mosaic in (1.0, 0.0):
        hyp.mosaic = mosaic
        dataset = LoadedDataset(polygon_dataset, LoaderConfig(img_size=96, hyp=hyp, augment=True, seed=4))
        for index in range(len(dataset)):
            img, targets, _, _ = dataset[index]
            bgr = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[..., ::-1])
            cx, cy, w, h = (targets[:, k].numpy() * 96 for k in range(2, 6))
            labels = np.stack([targets[:, 1].numpy(), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
            for cls, *box in labels:  # a mosaic may repeat an image: look near the box
                local = np.zeros(bgr.shape[:2], bool)
                x1, y1, x2, y2 = (int(v) for v in box)
                local[max(y1 - 3, 0) : y2 + 4, max(x1 - 3, 0) : x2 + 4] = True
                found = mask_box(color_mask(bgr, int(cls)) & local)
                assert found is not None and np.abs(found - np.array(box)).max() <= 3, (box, found)


# --- copy-paste -----------------------------------------------------------------------------------


def test_copy_paste_pastes_mirrored_objects_where_they_cover_little():
    img, labels, segments = draw_polygons(96, 128, [TRIANGLE, PENTAGON, DIAMOND])
    # DIAMOND's mirror (x 36..78) would cover most of TRIANGLE and PENTAGON: not pasted, nor theirs onto it
    out, pasted_labels, pasted_segments = augment.copy_paste(
        img.copy(), labels, segments, 1.0, np.random.default_rng(0)
    )
    new = {int(c) for c in pasted_labels[len(labels) :, 0]}
    assert len(pasted_labels) == len(pasted_segments) > len(labels) and 2 not in new
    for (cls, *box), points in zip(pasted_labels[len(labels) :], pasted_segments[len(labels) :]):
        original = labels[labels[:, 0] == cls][0, 1:]
        np.testing.assert_allclose(box, [128 - original[2], original[1], 128 - original[0], original[3]])
        np.testing.assert_allclose(points, segments[int(cls)] * (-1, 1) + (128, 0))
        local = np.zeros(out.shape[:2], bool)
        local[:, 64:] = True  # the pasted copy: the right half
        found = mask_box(color_mask(out, int(cls)) & local)
        assert found is not None and np.abs(found - np.array(box)).max() <= 2, (box, found)
        mirrored = np.fliplr(img)  # its pixels are the source's, mirrored
        inside = color_mask(out, int(cls)) & local
        assert np.array_equal(out[inside], mirrored[inside])
    np.testing.assert_array_equal(out[:, :64], img[:, :64])  # nothing else changed


def test_copy_paste_does_nothing_and_draws_nothing_without_segments():
    img, labels = draw_rectangles(64, 64, [(5, 5, 20, 20)])
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for segments in (None, [np.zeros((0, 2))]):
        out, same, _ = augment.copy_paste(img.copy(), labels, segments, 0.5, rng)
        assert np.array_equal(out, img) and same is labels and rng.bit_generator.state == state


def test_copy_paste_adds_mirrored_instances_to_training_mosaics(polygon_dataset):
    counts = {}
    for fraction in (0.0, 1.0):
        hyp = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, translate=0.0, scale=0.0, fliplr=0.0, mosaic=1.0)
        hyp.copy_paste = fraction
        dataset = LoadedDataset(polygon_dataset, LoaderConfig(img_size=96, hyp=hyp, augment=True, seed=5))
        assert dataset.copy_paste == fraction
        counts[fraction] = []
        for index in range(len(dataset)):
            dataset.rng = np.random.default_rng(index)  # the same mosaic with and without copy-paste
            img, targets, _, _ = dataset[index]
            counts[fraction].append(len(targets))
            bgr = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[..., ::-1])
            for cls in set(targets[:, 1].long().tolist()):  # every box, pasted ones too, is on its color
                for cx, cy, w, h in targets[targets[:, 1] == cls, 2:].numpy() * 96:
                    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                    local = np.zeros(bgr.shape[:2], bool)
                    local[
                        max(int(box[1]) - 3, 0) : int(box[3]) + 4, max(int(box[0]) - 3, 0) : int(box[2]) + 4
                    ] = True
                    assert mask_box(color_mask(bgr, cls) & local) is not None
    assert all(a >= b for a, b in zip(counts[1.0], counts[0.0])) and sum(counts[1.0]) > sum(counts[0.0])


def test_copy_paste_on_box_labels_is_said_once_and_changes_nothing(tmp_path, caplog):
    img, _ = draw_rectangles(64, 64, [(5, 5, 30, 30)])
    for i in range(3):
        write_image(tmp_path, f"b{i}", img, ["0 0.275 0.275 0.390625 0.390625"])
    items = []
    for fraction in (0.0, 0.5):
        hyp = Hyp(degrees=10)
        hyp.copy_paste = fraction
        with caplog.at_level(logging.WARNING):
            dataset = LoadedDataset(
                tmp_path / "images/train", LoaderConfig(img_size=64, hyp=hyp, augment=True)
            )
        items.append([dataset[i % 3] for i in range(6)])
    said = [r.getMessage() for r in caplog.records if "copy_paste" in r.getMessage()]
    assert said == ["copy_paste=0.5 does nothing here: the labels are boxes only, and copy-paste pastes "
                    "objects labelled with polygons."]  # fmt: skip
    for (img_a, targets_a, _, _), (img_b, targets_b, _, _) in zip(*items):
        assert np.array_equal(img_a, img_b) and np.array_equal(targets_a, targets_b)


# --- a training split without labels ----------------------------------------------------------------


def test_a_training_split_of_refused_rows_stops_in_one_sentence(tmp_path, caplog):
    img, _ = draw_rectangles(64, 64, [(5, 5, 30, 30)])
    write_image(tmp_path, "a_background", img, [])
    for i in range(3):
        write_image(tmp_path, f"b{i}", img, ["0 0.5 0.5 0.2"])
    images = tmp_path / "images/train"
    with pytest.raises(DataError) as error:
        LoadedDataset(images, LoaderConfig(img_size=64, augment=True, prefix="train: "))
    message = str(error.value)
    first = Path(label_file_for(images / "b0.png")).resolve()
    assert message == (
        f"train: no label to train on in {images}: 3 of its 4 images were refused (the first, "
        f"{(images / 'b0.png').resolve()}, for {first}: label row 1 has 4 values, expected 5 (class cx cy "
        "w h) or a polygon of 3 or more points (class x1 y1 x2 y2 x3 y3 ...)) and the others have no label "
        "rows; "
        "fix the label files (each is named in the warnings above)."
    )
    with caplog.at_level(logging.INFO):  # a validation split without labels is only reported
        dataset = LoadedDataset(images, LoaderConfig(img_size=64, prefix="val: "))
    assert len(dataset) == 1 and "val: 4 images, 1 backgrounds, 3 corrupt" in caplog.text
    for i in range(3):
        Path(label_file_for(images / f"b{i}.png")).unlink()
    with pytest.raises(
        DataError, match=r"none of its 4 images has a label row \(e.g. .*a_background.txt is missing"
    ):
        LoadedDataset(images, LoaderConfig(img_size=64, augment=True))


def test_train_py_exits_2_when_the_train_split_has_no_usable_label(tmp_path, capsys):
    data_yaml, model_yaml = make_tiny_dataset(tmp_path, train_images=4, val_images=2)
    label_files = sorted((tmp_path / "shapes" / "labels" / "train").glob("*.txt"))
    label_files[0].write_text("")  # a background
    for label_file in label_files[1:]:
        label_file.write_text("0 0.5 0.5 0.2\n")  # four values: refused
    argv = ["--cfg", str(model_yaml), "--data", str(data_yaml), "--img", "64", "--epochs", "1",
            "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"),
            "--no-tensorboard"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.py: train: no label to train on in" in last and f"{len(label_files) - 1} of its" in last
    assert "label row 1 has 4 values" in last and "Traceback" not in last


# --- box-only data: augmented exactly as before polygons were read ------------------------------------

BOX_LAYOUTS = [
    [(5, 5, 35, 30), (50, 40, 90, 90), (10, 60, 30, 85)],
    [(2, 2, 40, 40), (60, 10, 94, 60), (45, 50, 58, 70)],
]
# per item: image pixel sum, number of targets, sum of the targets, the generator's next integer; recorded
# from the code before polygon labels were read (commit 747a5b6), mosaic on and off
BOX_ONLY_EXPECTED = {
    "mosaic": [
        (1681150, 2, 10.0958, 860361905),
        (1956053, 4, 9.2206, 1045245011),
        (1696904, 12, 54.5502, 313509651),
        (2476930, 10, 65.0457, 758017750),
        (1928193, 6, 32.8393, 976519419),
        (2232670, 11, 78.7966, 357402147),
        (1630297, 9, 41.8297, 821745686),
        (1907939, 10, 53.2457, 940909128),
        (2339072, 9, 61.0981, 718246188),
        (1839762, 8, 51.005, 350868370),
        (1419501, 8, 22.6648, 11282036),
        (1391884, 12, 53.8069, 326328686),
    ],
    "letterbox": [
        (2010098, 3, 7.5527, 715471179),
        (2622977, 3, 17.2851, 630070168),
        (2703707, 3, 24.9329, 416434939),
        (1541240, 3, 35.0487, 891084246),
        (2540106, 3, 7.0356, 632225327),
        (1741275, 3, 17.1613, 181448743),
        (1267279, 3, 7.6734, 860239434),
        (2595679, 3, 16.4809, 718470178),
        (2290280, 3, 24.7589, 51772060),
        (2595884, 3, 34.7803, 904214511),
        (1977043, 3, 7.4892, 392888291),
        (3497686, 3, 15.8825, 364776272),
    ],
}


def test_box_only_augmentation_is_unchanged(tmp_path):
    for i in range(6):
        height, width = (96, 128) if i % 2 else (128, 96)
        img, labels = draw_rectangles(height, width, BOX_LAYOUTS[i % 2], 3 * (i % 4))
        rows = [f"{int(c)} {(a + b) / 2 / width} {(d + e) / 2 / height} {(b - a) / width} {(e - d) / height}"
                for c, a, d, b, e in labels]  # fmt: skip
        write_image(tmp_path, f"im{i}", img, rows)
    for key, expected in BOX_ONLY_EXPECTED.items():
        hyp = Hyp(degrees=10, translate=0.1, scale=0.5, shear=2, perspective=0.0005, flipud=0.5, fliplr=0.5,
                  mosaic=float(key == "mosaic"), mixup=0.5)  # fmt: skip
        dataset = LoadedDataset(
            tmp_path / "images/train", LoaderConfig(img_size=96, hyp=hyp, augment=True, seed=3)
        )
        got = []
        for index in list(range(6)) * 2:
            img, targets, _, _ = dataset[index]
            got.append(
                [int(img.sum()), len(targets), float(targets.sum()), int(dataset.rng.integers(1 << 30))]
            )
        for (pixels, count, total, draw), (want_pixels, want_count, want_total, want_draw) in zip(
            got, expected
        ):
            assert (pixels, count, draw) == (want_pixels, want_count, want_draw)
            assert abs(total - want_total) < 1e-3
