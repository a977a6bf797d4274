"""Image + box augmentation for detection: 4-image mosaic, copy-paste, random affine/perspective, HSV,
flips, mixup, and the filter that drops boxes that left the image.

Images are uint8 (H, W, 3) BGR numpy arrays (as cv2 reads them). Labels are float arrays (n, 5) with
rows (class, x1, y1, x2, y2) in pixels unless a function says normalized (class, cx, cy, w, h).
Segments, where the labels have polygons (utils.data.labels), travel beside them through the mosaic,
copy-paste and the warp: a list of one (k, 2) pixel (x, y) array per label row, k = 0 for a box row, or
None when every row is a box (then the boxes are transformed exactly as before polygons were read). A
polygon's box is the extent of the visible part of its moved outline (clip_and_filter): tighter than the
transformed box under rotation or shear, and than the clipped box where the image edge cuts it. Segments
end with the warp, as in yolov5: the flips that follow act on boxes, which loses nothing, since the
extent of a flipped polygon is the flipped extent.
Random functions take an ``np.random.Generator`` so each dataloader worker draws its own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from utils.data.preprocess import PAD_VALUE

Segments = Optional[list]  # one (k, 2) pixel x, y array per label row (k = 0: a box row); None: boxes only
RESAMPLED_POINTS = 1000  # points along a polygon's outline where it is clipped (yolov5 warps 1000)


def box_candidates(
    before: np.ndarray,
    after: np.ndarray,
    min_size: float = 2,
    max_aspect: float = 20,
    min_area_ratio: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Which transformed boxes are still worth training on. before/after: (n, 4) xyxy -> bool (n,).

    before is the box transformed but not clipped, after is the same box clipped to the image: keep a
    box when both sides of after are > min_size px, it keeps > min_area_ratio of its area, and its
    aspect ratio stays below max_aspect.
    """
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + eps), h1 / (w1 + eps))
    area_ratio = (w1 * h1) / (w0 * h0 + eps)
    return (w1 > min_size) & (h1 > min_size) & (area_ratio > min_area_ratio) & (aspect < max_aspect)


def clip_and_filter(
    labels: np.ndarray, width: float, height: float, segments: Segments = None
) -> tuple[np.ndarray, Segments]:
    """Clip (n, 5) pixel labels to the image and drop those that mostly left it. -> (labels, segments).

    A row with a segment takes as its box the extent of the segment's outline inside the image (the
    points of resample_segment that are), and those points as its segment: the box of what is visible of
    a polygon, where clipping its box would keep the extent of what was cut off.
    """
    clipped = labels.copy()
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, width)
    clipped[:, [2, 4]] = clipped[:, [2, 4]].clip(0, height)
    if segments is None:
        return clipped[box_candidates(labels[:, 1:5], clipped[:, 1:5])], None
    before, segments = labels[:, 1:5].copy(), list(segments)
    for row, segment in enumerate(segments):
        if len(segment):
            points = resample_segment(segment)
            segments[row] = points[((points >= 0) & (points <= (width, height))).all(1)]
            before[row] = _extent(points)
            clipped[row, 1:5] = _extent(segments[row]) if len(segments[row]) else 0  # 0: dropped below
    keep = box_candidates(before, clipped[:, 1:5])
    return clipped[keep], [segment for segment, kept in zip(segments, keep) if kept]


@dataclass(frozen=True)
class PerspectiveRanges:
    """The ranges random_perspective draws from, named as the Hyp fields that set them in training."""

    degrees: float = 0.0  # rotation, +/- degrees
    translate: float = 0.1  # translation, +/- fraction of the output size
    scale: float = 0.5  # scale gain, +/- (1 - scale, 1 + scale)
    shear: float = 0.0  # shear, +/- degrees on each axis
    perspective: float = 0.0  # perspective, +/- fraction (0 to 0.001)

    @classmethod
    def from_hyp(cls, hyp) -> PerspectiveRanges:
        """The ranges a utils.hyp.Hyp sets."""
        return cls(hyp.degrees, hyp.translate, hyp.scale, hyp.shear, hyp.perspective)


def _affine_matrix(
    rng: np.random.Generator, in_shape: tuple[int, int], out_shape: tuple[int, int], ranges: PerspectiveRanges
) -> np.ndarray:
    """3x3 matrix: move the input center to the origin, perspective, rotate+scale, shear, then move
    to a randomly translated output center."""
    center = np.eye(3)
    center[0, 2], center[1, 2] = -in_shape[1] / 2, -in_shape[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-ranges.perspective, ranges.perspective, size=2)
    rotate = np.eye(3)
    angle = rng.uniform(-ranges.degrees, ranges.degrees)
    gain = rng.uniform(1 - ranges.scale, 1 + ranges.scale)
    rotate[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=gain)
    shear_m = np.eye(3)
    shear_m[0, 1], shear_m[1, 0] = np.tan(np.deg2rad(rng.uniform(-ranges.shear, ranges.shear, size=2)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - ranges.translate, 0.5 + ranges.translate) * out_shape[1]
    move[1, 2] = rng.uniform(0.5 - ranges.translate, 0.5 + ranges.translate) * out_shape[0]
    return move @ shear_m @ rotate @ persp @ center


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (m, 2) x, y points through a 3x3 matrix. -> (m, 2)."""
    homogeneous = np.ones((len(points), 3))
    homogeneous[:, :2] = points
    mapped = homogeneous @ matrix.T
    return mapped[:, :2] / mapped[:, 2:3]  # perspective divide (1 for affine)


def transform_boxes(boxes_xyxy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (n, 4) xyxy boxes through a 3x3 matrix; the result is the xyxy box around the 4 mapped corners."""
    n = len(boxes_xyxy)
    corners = boxes_xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # (n*4, xy) per corner
    mapped = transform_points(corners, matrix).reshape(n, 4, 2)  # (n, corners, xy)
    return np.concatenate([mapped.min(1), mapped.max(1)], 1)


def resample_segment(segment: np.ndarray, count: int = RESAMPLED_POINTS) -> np.ndarray:
    """The closed polygon's (k, 2) vertices and `count` points evenly spaced along its outline, in outline
    order. -> (m, 2). The vertices keep the extent exact; the others find where the outline leaves an
    image."""
    closed = np.concatenate([segment, segment[:1]], 0)
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    wanted = np.union1d(np.linspace(0, along[-1], count, endpoint=False), along[:-1])
    return np.stack([np.interp(wanted, along, closed[:, axis]) for axis in (0, 1)], 1)


def _extent(points: np.ndarray) -> np.ndarray:
    """The xyxy box around (m, 2) points."""
    return np.concatenate([points.min(0), points.max(0)])


def random_perspective(
    img: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    ranges: PerspectiveRanges = PerspectiveRanges(),
    border: tuple[int, int] = (0, 0),
    segments: Segments = None,
) -> tuple[np.ndarray, np.ndarray, Segments]:
    """Random rotation, scale, shear, translation and perspective (drawn within `ranges`) of image,
    (n, 5) pixel labels and their segments. -> (image, labels, segments).

    The output is the input size plus 2 * border (h, w) on each axis; a mosaic passes a negative border
    to crop its 2s x 2s canvas to s x s. Boxes are transformed exactly (through their corners), clipped,
    and filtered with box_candidates; a row with a segment gets the box of the transformed segment's
    visible part (clip_and_filter).
    """
    out_h, out_w = img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1]
    matrix = _affine_matrix(rng, img.shape[:2], (out_h, out_w), ranges)
    return _warp(img, labels, segments, (matrix, matrix), (out_h, out_w))


def _warp(img, labels, segments, matrices, out_shape):
    """Warp the image with matrices[0] and the (n, 5) pixel labels and their segments with matrices[1] into
    out_shape (h, w); labels are then clipped and filtered. The matrices differ when img is a crop of the
    labels' frame."""
    image_matrix, label_matrix = matrices
    out_h, out_w = out_shape
    fill = (PAD_VALUE, PAD_VALUE, PAD_VALUE)
    if image_matrix[2, 0] or image_matrix[2, 1]:  # perspective
        img = cv2.warpPerspective(img, image_matrix, dsize=(out_w, out_h), borderValue=fill)
    else:
        img = cv2.warpAffine(img, image_matrix[:2], dsize=(out_w, out_h), borderValue=fill)
    if len(labels):
        moved = labels.copy()
        moved[:, 1:5] = transform_boxes(labels[:, 1:5], label_matrix)
        if segments is not None:  # straight lines stay straight: the vertices are enough
            segments = [transform_points(s, label_matrix) if len(s) else s for s in segments]
        labels, segments = clip_and_filter(moved, out_w, out_h, segments)
    return img, labels, segments


def augment_hsv(
    img: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5
):
    """Random hue/saturation/value gains on a BGR image, in place (three lookup tables, no per-pixel math)."""
    if not (hgain or sgain or vgain):
        return
    gains = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def fliplr(img: np.ndarray, labels_normalized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip of an image and its (n, 5) normalized (class, cx, cy, w, h) labels."""
    labels_normalized = labels_normalized.copy()
    labels_normalized[:, 1] = 1 - labels_normalized[:, 1]
    return np.fliplr(img), labels_normalized


def flipud(img: np.ndarray, labels_normalized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up-down flip of an image and its (n, 5) normalized (class, cx, cy, w, h) labels."""
    labels_normalized = labels_normalized.copy()
    labels_normalized[:, 2] = 1 - labels_normalized[:, 2]
    return np.flipud(img), labels_normalized


def _mosaic_placements(center: tuple[int, int], shapes_hw: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(left, top) of each of the 4 images on the canvas: image 0 ends at the center from the top-left,
    1 from the top-right, 2 from the bottom-left, 3 from the bottom-right (positions may be < 0)."""
    center_x, center_y = center
    return [
        (center_x - w if k in (0, 2) else center_x, center_y - h if k in (0, 1) else center_y)
        for k, (h, w) in enumerate(shapes_hw)
    ]


def _paste_pieces(canvas, origin, placements, pieces, canvas_size):
    """Copy each (image, labels, segments) piece onto canvas (whose top-left is at `origin` of the full 2s
    canvas), cut by the full canvas edges. Pieces that are None are skipped. -> (labels, segments) moved to
    full canvas coords, clipped to it and filtered; segments None when no piece has any."""
    all_labels, all_segments = [], []
    for (left, top), piece in zip(placements, pieces):
        if piece is None:
            continue
        img, labels, segments = piece
        h, w = img.shape[:2]
        x1, y1 = max(left, origin[0], 0), max(top, origin[1], 0)
        x2 = min(left + w, origin[0] + canvas.shape[1], canvas_size)
        y2 = min(top + h, origin[1] + canvas.shape[0], canvas_size)
        if x2 > x1 and y2 > y1:
            canvas[y1 - origin[1] : y2 - origin[1], x1 - origin[0] : x2 - origin[0]] = img[
                y1 - top : y2 - top, x1 - left : x2 - left
            ]
        if len(labels):
            moved = labels.copy()
            moved[:, [1, 3]] += left
            moved[:, [2, 4]] += top
            all_labels.append(moved)
            all_segments.append(
                [np.zeros((0, 2))] * len(labels) if segments is None else [s + (left, top) for s in segments]
            )
    labels = np.concatenate(all_labels, 0) if all_labels else np.zeros((0, 5))
    has_segments = any(len(s) for piece_segments in all_segments for s in piece_segments)
    segments = [s for piece_segments in all_segments for s in piece_segments] if has_segments else None
    if not len(labels):
        return labels, segments
    return clip_and_filter(labels, canvas_size, canvas_size, segments)


def mosaic(
    pieces: list[tuple[np.ndarray, np.ndarray, Segments]], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Segments]:
    """Tile 4 (image, (n, 5) pixel labels, segments) triples around a random center of a 2*size square
    canvas.

    Each image is cut by the canvas edges only. -> (canvas (2s, 2s, 3), labels and segments clipped to the
    canvas and filtered). random_perspective(border=(-s // 2, -s // 2)) then gives s x s; random_mosaic
    does both at once, faster.
    """
    center = tuple(int(v) for v in rng.uniform(size / 2, 1.5 * size, size=2))
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, dtype=np.uint8)
    placements = _mosaic_placements(center, [img.shape[:2] for img, _, _ in pieces])
    return canvas, *_paste_pieces(canvas, (0, 0), placements, pieces, 2 * size)


def random_mosaic(
    load_piece: Callable[[int], tuple[np.ndarray, np.ndarray, Segments]],
    shapes_hw: list[tuple[int, int]],
    size: int,
    rng: np.random.Generator,
    ranges: PerspectiveRanges = PerspectiveRanges(),
    copy_paste_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, Segments]:
    """mosaic, copy_paste (with copy_paste_fraction) and random_perspective to size x size, without the
    waste: only the part of the 2s x 2s canvas that the transform brings into view is built (widened to
    its mirror image for copy-paste, which mirrors the canvas), and images entirely out of it are never
    loaded. load_piece(k) -> (image of shape shapes_hw[k], (n, 5) pixel labels, segments).

    Without copy-paste, draws the same random numbers in the same order as mosaic + random_perspective, so
    both give the same result. -> (image (size, size, 3), labels (n, 5) pixel xyxy, segments).
    """
    canvas_size = 2 * size
    center = tuple(int(v) for v in rng.uniform(size / 2, 1.5 * size, size=2))
    matrix = _affine_matrix(rng, (canvas_size, canvas_size), (size, size), ranges)
    # the canvas region seen by the output: the output corners mapped back, plus a margin for interpolation
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    back = corners @ np.linalg.inv(matrix).T
    back = back[:, :2] / back[:, 2:3]
    x1, y1 = np.clip(np.floor(back.min(0)) - 2, 0, canvas_size).astype(int)
    x2, y2 = np.clip(np.ceil(back.max(0)) + 2, 0, canvas_size).astype(int)
    if copy_paste_fraction:  # symmetric about the canvas center: mirroring the crop mirrors the canvas
        x1 = min(x1, canvas_size - x2)
        x2 = canvas_size - x1
    placements = _mosaic_placements(center, shapes_hw)
    pieces = []
    for k, ((left, top), (h, w)) in enumerate(zip(placements, shapes_hw)):
        in_view = left < x2 and left + w > x1 and top < y2 and top + h > y1
        pieces.append(load_piece(k) if in_view else None)
    canvas = np.full((max(y2 - y1, 1), max(x2 - x1, 1), 3), PAD_VALUE, dtype=np.uint8)
    labels, segments = _paste_pieces(canvas, (x1, y1), placements, pieces, canvas_size)
    shift = np.eye(3)
    shift[0, 2], shift[1, 2] = x1, y1  # canvas crop pixel -> full canvas pixel
    if copy_paste_fraction and segments is not None:
        labels, segments = _shift(labels, segments, -x1, -y1)
        canvas, labels, segments = copy_paste(canvas, labels, segments, copy_paste_fraction, rng)
        labels, segments = _shift(labels, segments, x1, y1)
    return _warp(canvas, labels, segments, (matrix @ shift, matrix), (size, size))


def _shift(labels: np.ndarray, segments: list, dx: float, dy: float) -> tuple[np.ndarray, list]:
    """(n, 5) pixel labels and their segments moved by (dx, dy)."""
    moved = labels.copy()
    moved[:, [1, 3]] += dx
    moved[:, [2, 4]] += dy
    return moved, [segment + (dx, dy) for segment in segments]


def _intersection_over_area(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fraction of each of boxes (n, 4) xyxy that box (4,) xyxy covers. -> (n,)."""
    width = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    height = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return width * height / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + 1e-7)


def copy_paste(
    img: np.ndarray,
    labels: np.ndarray,
    segments: Segments,
    fraction: float,
    rng: np.random.Generator,
    max_cover: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, Segments]:
    """yolov5's copy-paste (Ghiasi et al., 2021) within one image: round(fraction * n) of its n objects
    with a segment, drawn at random, are mirrored left-right and pasted (pixels inside the polygon only)
    where the mirrored box covers less than max_cover of every box already there. img is changed in place.
    -> (img, labels with the pasted rows appended, segments likewise). Box rows are never pasted, and
    nothing is drawn from rng when there is no segment."""
    candidates = [row for row, segment in enumerate(segments or []) if len(segment)]
    count = round(fraction * len(candidates))
    if not count:
        return img, labels, segments
    width = img.shape[1]
    mask = np.zeros(img.shape[:2], np.uint8)
    segments = list(segments)
    for row in rng.choice(candidates, size=count, replace=False):
        cls, x1, y1, x2, y2 = labels[row]
        mirrored_box = np.array([width - x2, y1, width - x1, y2])
        if (_intersection_over_area(mirrored_box, labels[:, 1:5]) < max_cover).all():
            labels = np.concatenate([labels, [[cls, *mirrored_box]]], 0)
            segments.append(segments[row] * (-1, 1) + (width, 0))
            cv2.fillPoly(mask, [np.round(segments[row]).astype(np.int32)], 1)
    pasted = mask[:, ::-1].astype(bool)  # where the mirrored objects land
    img[pasted] = img[:, ::-1][pasted]
    return img, labels, segments


def mixup(
    img: np.ndarray,
    labels: np.ndarray,
    other_img: np.ndarray,
    other_labels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio and keep the labels of both."""
    ratio = rng.beta(32.0, 32.0)
    blended = cv2.addWeighted(img, ratio, other_img, 1 - ratio, 0)
    return blended, np.concatenate([labels, other_labels], 0)


def augment_colors_and_flips(
    img: np.ndarray, labels_normalized: np.ndarray, rng: np.random.Generator, hyp
) -> tuple[np.ndarray, np.ndarray]:
    """The photometric and flip steps of training augmentation, controlled by a Hyp."""
    augment_hsv(img, rng, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v)
    if rng.random() < hyp.flipud:
        img, labels_normalized = flipud(img, labels_normalized)
    if rng.random() < hyp.fliplr:
        img, labels_normalized = fliplr(img, labels_normalized)
    return img, labels_normalized


def fit_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing so the long side is `size`, aspect kept (what resize_to_fit returns)."""
    ratio = size / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize_interpolation(height: int, width: int, size: int, augment: bool) -> int:
    """The cv2 interpolation resize_to_fit uses: INTER_AREA to shrink without augmentation, else linear."""
    return cv2.INTER_LINEAR if (augment or fit_shape(height, width, size)[1] > width) else cv2.INTER_AREA


def resize_to_fit(img: np.ndarray, size: int, augment: bool) -> np.ndarray:
    """Resize so the long side is `size` (aspect kept), with resize_interpolation's choice."""
    height, width = img.shape[:2]
    new_h, new_w = fit_shape(height, width, size)
    if (new_h, new_w) == (height, width):
        return img
    interpolation = resize_interpolation(height, width, size, augment)
    return cv2.resize(img, (new_w, new_h), interpolation=interpolation)
