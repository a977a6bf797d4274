"""Boxes must stay on their objects through letterbox, flips, affine/perspective and mosaic.

Each object is a filled rectangle of a unique color (its class id indexes COLORS); after a transform,
the pixels of that color are found again and compared with the transformed box.
"""

import numpy as np
import pytest

from tests.helpers import COLORS, color_mask, draw_rectangles, iou, mask_box
from utils.boxes import scale_boxes_to_original
from utils.data import augment, preprocess


def check_boxes_on_objects(img, labels, exact=True, min_iou=0.9, tolerance_px=2.0):
    """Every label box holds its rectangle's visible pixels; with exact, IoU with them > min_iou."""
    assert len(labels), "no box survived"
    for cls, *box in labels:
        found = mask_box(color_mask(img, int(cls)))
        assert found is not None, f"class {int(cls)} has a box but no visible pixels"
        box = np.array(box)
        assert (found[:2] >= box[:2] - tolerance_px).all() and (found[2:] <= box[2:] + tolerance_px).all(), (
            f"class {int(cls)}: box {box.round(1)} does not cover its pixels {found}"
        )
        if exact:  # every side within a pixel or two (interpolation blurs edges), and a high IoU
            assert np.abs(found - box).max() <= tolerance_px, (
                f"class {int(cls)}: box {box.round(1)} vs {found}"
            )
            assert iou(found, box) > min_iou or min(box[2] - box[0], box[3] - box[1]) < 15


def check_visible_objects_kept(img, labels, min_pixels=60):
    """A rectangle that is clearly visible and away from the border must still have its box."""
    kept = {int(c) for c in labels[:, 0]}
    height, width = img.shape[:2]
    for cls in range(len(COLORS)):
        mask = color_mask(img, cls)
        box = mask_box(mask)
        if box is None or mask.sum() < min_pixels or box[0] <= 1 or box[1] <= 1:
            continue
        if box[2] >= width - 1 or box[3] >= height - 1:
            continue
        assert cls in kept, f"class {cls} is fully visible ({mask.sum()} px) but its box was dropped"


@pytest.mark.parametrize("new_shape", [128, (64, 96), (96, 64)])
@pytest.mark.parametrize("scaleup", [True, False])
def test_letterbox_moves_boxes_and_maps_back(new_shape, scaleup):
    img, labels = draw_rectangles(60, 100, [(5, 5, 30, 25), (50, 20, 95, 55), (35, 30, 48, 58)])
    out, (ratio_h, ratio_w), (pad_x, pad_y) = preprocess.letterbox(img, new_shape, scaleup=scaleup)
    target = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    assert out.shape[:2] == target
    assert abs(ratio_h - ratio_w) < 0.05 and (scaleup or ratio_w <= 1)
    moved = labels.copy()
    moved[:, [1, 3]] = labels[:, [1, 3]] * ratio_w + pad_x
    moved[:, [2, 4]] = labels[:, [2, 4]] * ratio_h + pad_y
    check_boxes_on_objects(out, moved)
    back = scale_boxes_to_original(moved[:, 1:].copy(), (60, 100), ((ratio_h, ratio_w), (pad_x, pad_y)))
    np.testing.assert_allclose(back, labels[:, 1:], atol=1e-6)


def test_letterbox_auto_pads_to_stride_multiple():
    img = np.zeros((100, 200, 3), np.uint8)
    out, _, (pad_x, pad_y) = preprocess.letterbox(img, 256, auto=True, stride=32)
    assert out.shape[:2] == (128, 256) and pad_x == 0 and pad_y == 0


def test_flips_move_boxes():
    img, labels = draw_rectangles(80, 120, [(5, 10, 40, 30), (70, 40, 110, 75)])
    normalized = labels.copy()
    normalized[:, 1:] = np.concatenate(
        [(labels[:, 1:3] + labels[:, 3:5]) / 2, labels[:, 3:5] - labels[:, 1:3]], 1
    )
    normalized[:, [1, 3]] /= 120
    normalized[:, [2, 4]] /= 80
    for flip in (augment.fliplr, augment.flipud):
        out, flipped = flip(img, normalized)
        pixel = flipped.copy()
        pixel[:, 1], pixel[:, 3] = (
            (flipped[:, 1] - flipped[:, 3] / 2) * 120,
            (flipped[:, 1] + flipped[:, 3] / 2) * 120,
        )
        pixel[:, 2], pixel[:, 4] = (
            (flipped[:, 2] - flipped[:, 4] / 2) * 80,
            (flipped[:, 2] + flipped[:, 4] / 2) * 80,
        )
        check_boxes_on_objects(np.ascontiguousarray(out), pixel)


AFFINE_CASES = {
    "scale_translate": augment.PerspectiveRanges(degrees=0, translate=0.2, scale=0.5, shear=0, perspective=0),
    "rotate": augment.PerspectiveRanges(degrees=30, translate=0.1, scale=0.3, shear=0, perspective=0),
    "shear": augment.PerspectiveRanges(degrees=0, translate=0.1, scale=0.2, shear=10, perspective=0),
    "perspective": augment.PerspectiveRanges(
        degrees=5, translate=0.1, scale=0.2, shear=2, perspective=0.0008
    ),
}


@pytest.mark.parametrize("case", list(AFFINE_CASES))
def test_random_perspective_keeps_boxes_on_objects(case):
    img, labels = draw_rectangles(
        128, 128, [(10, 10, 40, 34), (60, 15, 110, 50), (20, 70, 50, 115), (75, 80, 118, 120)]
    )
    axis_aligned = case == "scale_translate"
    for seed in range(6):
        rng = np.random.default_rng(seed)
        out, moved, segments = augment.random_perspective(img, labels, rng, AFFINE_CASES[case])
        assert segments is None  # box labels: no segments appear
        assert out.shape == img.shape
        # rotated rectangles: the corner box is the rectangle's box, unless clipping cut a corner off
        check_boxes_on_objects(out, moved, exact=axis_aligned, tolerance_px=2.5)
        check_visible_objects_kept(out, moved)


def test_random_perspective_drops_boxes_that_left_the_image():
    img, labels = draw_rectangles(100, 100, [(0, 0, 12, 12), (40, 40, 60, 60)])
    rng = np.random.default_rng(0)
    # translate far right: the small top-left box stays, the content moves; use a pure shift of 0.5
    out, moved, _ = augment.random_perspective(
        img, labels, rng, augment.PerspectiveRanges(degrees=0, translate=0.0, scale=0.0), border=(-40, -40)
    )
    assert out.shape[:2] == (20, 20)
    assert set(moved[:, 0].astype(int)) == {1}  # the corner box is outside the 20x20 center crop


def test_box_candidates():
    before = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 2]], dtype=float)
    after = np.array([[0, 0, 50, 50], [0, 0, 9, 100], [0, 0, 1.5, 90], [0, 0, 100, 2]], dtype=float)
    assert augment.box_candidates(before, after).tolist() == [True, False, False, False]


@pytest.mark.parametrize("seed", range(4))
def test_mosaic_keeps_boxes_on_objects(seed):
    size = 96
    pieces = [
        (*draw_rectangles(96, 96, [(5, 5, 35, 30), (50, 40, 90, 90), (10, 60, 30, 85)], first_class=0), None),
        (*draw_rectangles(72, 96, [(2, 2, 40, 40), (60, 10, 94, 60), (45, 50, 58, 70)], first_class=3), None),
        (*draw_rectangles(96, 64, [(5, 5, 55, 40), (10, 50, 40, 90), (45, 60, 62, 94)], first_class=6), None),
        (*draw_rectangles(80, 80, [(0, 0, 30, 30), (40, 40, 78, 78), (50, 5, 75, 25)], first_class=9), None),
    ]
    rng = np.random.default_rng(seed)
    canvas, labels, segments = augment.mosaic(pieces, size, rng)
    assert segments is None
    assert canvas.shape == (2 * size, 2 * size, 3)
    check_boxes_on_objects(canvas, labels)
    check_visible_objects_kept(canvas, labels)
    ranges = augment.PerspectiveRanges(degrees=0, translate=0.1, scale=0.5)
    out, moved, _ = augment.random_perspective(canvas, labels, rng, ranges, border=(-size // 2, -size // 2))
    assert out.shape == (size, size, 3)
    if len(moved):
        check_boxes_on_objects(out, moved)
    check_visible_objects_kept(out, moved)


def test_mixup_keeps_both_label_sets():
    a, labels_a = draw_rectangles(64, 64, [(5, 5, 20, 20)])
    b, labels_b = draw_rectangles(64, 64, [(30, 30, 60, 60)], first_class=1)
    out, labels = augment.mixup(a, labels_a, b, labels_b, np.random.default_rng(0))
    assert out.shape == a.shape and labels[:, 0].tolist() == [0, 1]
    assert 0 < out[10, 10].astype(int).sum() < a[10, 10].astype(int).sum()  # blended


def test_augment_hsv_in_place_and_identity_when_off():
    img, _ = draw_rectangles(32, 32, [(4, 4, 20, 20)])
    same = img.copy()
    augment.augment_hsv(same, np.random.default_rng(0), 0, 0, 0)
    np.testing.assert_array_equal(same, img)
    changed = img.copy()
    augment.augment_hsv(changed, np.random.default_rng(0), 0.5, 0.5, 0.5)
    assert changed.shape == img.shape and not np.array_equal(changed, img)


@pytest.mark.parametrize("seed", range(6))
def test_random_mosaic_equals_mosaic_then_perspective(seed):
    size = 96
    pieces = [
        (*draw_rectangles(96, 96, [(5, 5, 35, 30), (50, 40, 90, 90)], first_class=0), None),
        (*draw_rectangles(72, 96, [(2, 2, 40, 40), (60, 10, 94, 60)], first_class=3), None),
        (*draw_rectangles(96, 64, [(5, 5, 55, 40), (10, 50, 40, 90)], first_class=6), None),
        (*draw_rectangles(80, 80, [(0, 0, 30, 30), (40, 40, 78, 78)], first_class=9), None),
    ]
    ranges = augment.PerspectiveRanges(degrees=10, translate=0.1, scale=0.5, shear=2)
    rng = np.random.default_rng(seed)
    canvas, labels, _ = augment.mosaic(pieces, size, rng)
    expected, expected_labels, _ = augment.random_perspective(canvas, labels, rng, ranges, border=(-48, -48))
    loaded = []
    rng = np.random.default_rng(seed)
    shapes_hw = [p[0].shape[:2] for p in pieces]
    img, got_labels, segments = augment.random_mosaic(
        lambda k: loaded.append(k) or pieces[k], shapes_hw, size, rng, ranges
    )
    assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1 and segments is None
    np.testing.assert_allclose(got_labels, expected_labels, atol=1e-6)
    visible_classes = {c for c in range(12) if color_mask(img, c).any()}
    assert {
        c for k in loaded for c in pieces[k][1][:, 0]
    } >= visible_classes  # every visible piece was loaded
