"""YOLO label files: where an image's labels live, the checked scan of a dataset's images and labels
(reported once, cached), and the writer of predictions in the same format.

Each image is checked (readable, not truncated, at least 10 px) and its YOLO label file parsed
(coordinates in [0, 1], no duplicate rows). A row is a box, ``class cx cy w h``, or a polygon,
``class x1 y1 x2 y2 x3 y3 ...`` (3 or more points, as Roboflow, CVAT and yolov5's segment datasets
export them): a polygon's box is its extent, and its points are kept for the augmentations that use them
(utils.data.augment). Unlike yolov5, which reads every row of a file holding a polygon as a polygon (a box
row becomes a 2-point "polygon" whose extent is no box), each row is read as what it is.

The result is cached as JSON next to the labels (e.g. ``labels/train.cache.json``), keyed by a hash of
every file's path, size and mtime, so it is rebuilt whenever a file changes. Class ids are checked
against nc after loading, so one cache serves any nc.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.boxes import box_xyxy_to_normxywh
from utils.paths import atomic_open

LOGGER = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: entries carry polygon points ("segments")
MIN_IMAGE_SIZE = 10
COORD_EPS = 1e-3  # tolerated rounding outside [0, 1]
_ROTATED_EXIF = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


def label_file_for(image_path: str | Path) -> str:
    """The YOLO label file of an image: the last '/images/' in the path becomes '/labels/', suffix .txt."""
    path = str(image_path)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images in path:
        head, tail = path.rsplit(images, 1)
        path = head + labels + tail
    return str(Path(path).with_suffix(".txt"))


def _check_image(image_file: str) -> tuple[list[int] | None, str]:
    """-> ([width, height] as displayed, "") or (None, reason)."""
    try:
        with open(image_file, "rb") as f:
            if f.read(2) == b"\xff\xd8":  # a JPEG must end with the end-of-image marker
                f.seek(-2, os.SEEK_END)
                if f.read() != b"\xff\xd9":
                    return None, "truncated JPEG (no end-of-image marker); re-save or remove it"
        with Image.open(image_file) as img:
            img.verify()  # checks the data without decoding; only size and format are usable afterwards
            (width, height), image_format = img.size, img.format
        orientation = None
        if image_format in ("JPEG", "MPO", "TIFF", "WEBP"):  # formats that carry an EXIF orientation
            with Image.open(image_file) as img:
                orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception as error:  # PIL raises many types for broken files
        return None, f"unreadable image ({type(error).__name__}: {error})"
    if orientation in _ROTATED_EXIF:
        width, height = height, width
    if min(width, height) < MIN_IMAGE_SIZE:
        return None, f"image is only {width}x{height} px (minimum {MIN_IMAGE_SIZE})"
    return [width, height], ""


def _row_length_error(number: int, length: int) -> str:
    """Why a row of `length` values is neither a box (5) nor a polygon (class and 3+ x y pairs), or ""."""
    if length == 5 or (length >= 7 and length % 2):
        return ""
    if length > 5:
        return (
            f"label row {number} has {length - 1} coordinates, an odd number; a polygon row is class "
            "followed by x y pairs (class x1 y1 x2 y2 x3 y3 ...)"
        )
    return (
        f"label row {number} has {length} values, expected 5 (class cx cy w h) or a polygon of 3 or more "
        "points (class x1 y1 x2 y2 x3 y3 ...)"
    )


def _value_error(rows: list[np.ndarray], words: list[list[str]]) -> str:
    """The first row whose values cannot be a label, or "". rows: one float array per row, as read."""

    def first(bad) -> int:
        return next((number for number, row in enumerate(rows, 1) if bad(row)), 0)

    # NaN fails every range comparison below, so it must be caught first
    if number := first(lambda row: not np.isfinite(row).all()):
        return f"label row {number} has a value that is not a finite number (nan or inf)"
    if number := first(lambda row: row[0] < 0 or row[0] != np.round(row[0])):
        return f"label row {number} has class id {words[number - 1][0]}, expected an integer >= 0"
    if number := first(lambda row: ((row[1:] < -COORD_EPS) | (row[1:] > 1 + COORD_EPS)).any()):
        return f"label row {number} has coordinates outside [0, 1] (labels must be normalized)"
    if number := first(lambda row: len(row) == 5 and (row[3:] <= 0).any()):
        return f"label row {number} has a box of zero width or height"
    if number := first(lambda row: len(row) > 5 and (np.ptp(_points(row), 0) <= 0).any()):
        return (
            f"label row {number} has a polygon of zero width or height (all its points on one vertical or "
            "horizontal line)"
        )
    return ""


def _points(row: np.ndarray) -> np.ndarray:
    """A polygon row's points, clipped to [0, 1]: (k, 2) normalized x, y."""
    return row[1:].clip(0, 1).reshape(-1, 2)


def _box_and_segment(row: np.ndarray) -> tuple[list[float], list[float]]:
    """A checked row -> ([class, cx, cy, w, h] normalized, polygon x1, y1, x2, y2, ... or [] for a box)."""
    if len(row) == 5:
        return [row[0], *row[1:].clip(0, 1)], []
    points = _points(row)
    low, high = points.min(0), points.max(0)  # the box is the polygon's extent
    return [row[0], *(low + high) / 2, *(high - low)], points.ravel().tolist()


def _parse_labels(label_file: str) -> tuple[list[list[float]], list[list[float]], str, str]:
    """-> (rows, segments, error, note). rows: [class, cx, cy, w, h] normalized, one per label; segments:
    [] when every row is a box, else one flat [x1, y1, x2, y2, ...] list per row ([] for a box row).
    error makes the image unusable; note is a warning (duplicates removed)."""
    if not os.path.isfile(label_file):
        return [], [], "", ""
    try:
        with open(label_file) as f:
            words = [line.split() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        return [], [], f"unreadable label file ({error})", ""
    for number, row in enumerate(words, 1):
        if error := _row_length_error(number, len(row)):
            return [], [], error, ""
    try:
        rows = [np.array(row, dtype=np.float64) for row in words]
    except ValueError:
        return [], [], "label file has a non-numeric value", ""
    if error := _value_error(rows, words):
        return [], [], error, ""
    boxes, segments = zip(*(_box_and_segment(row) for row in rows)) if rows else ((), ())
    first_of = {}  # identical rows count once; the first is kept, in file order
    for index, (box, segment) in enumerate(zip(boxes, segments)):
        first_of.setdefault((box[0], *segment) if segment else tuple(box), index)
    kept = list(first_of.values())
    note = f"{len(rows) - len(kept)} duplicate label row(s) removed" if len(kept) < len(rows) else ""
    labels = np.array([boxes[i] for i in kept], dtype=np.float64).reshape(-1, 5).tolist()
    polygons = [segments[i] for i in kept] if any(segments) else []
    return labels, polygons, "", note


def _check_pair(image_file: str) -> dict:
    shape, error = _check_image(image_file)
    labels, segments, note = [], [], ""
    label_file = label_file_for(image_file)
    if not error:
        labels, segments, error, note = _parse_labels(label_file)
        error = f"{label_file}: {error}" if error else ""
    return {
        "image": image_file,
        "shape": shape,
        "labels": labels,
        "segments": segments,
        "error": error,
        "note": note,
        "label_file": os.path.isfile(label_file),
    }


def files_hash(image_files: list[str]) -> str:
    """Hash of every image and label file's path, size and modification time."""
    digest = hashlib.sha256()
    for image_file in image_files:
        for path in (image_file, label_file_for(image_file)):
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def cache_file_for(image_files: list[str]) -> Path:
    """labels/train.cache.json for images under images/train/ (apart from yolov5's labels/train.cache)."""
    return Path(label_file_for(image_files[0])).parent.with_suffix(".cache.json")


def _read_cache(cache_file: Path, wanted_hash: str) -> list[dict] | None:
    try:
        with open(cache_file) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return None
    if cache.get("version") != CACHE_VERSION or cache.get("hash") != wanted_hash:
        return None
    return cache.get("entries")


def _write_cache(cache_file: Path, file_hash: str, entries: list[dict]) -> None:
    try:
        with atomic_open(cache_file) as f:
            json.dump({"version": CACHE_VERSION, "hash": file_hash, "entries": entries}, f)
    except OSError as error:
        LOGGER.warning(
            f"Could not write the label cache {cache_file} ({error}); labels will be scanned again next time."
        )


def scan_files(image_files: list[str]) -> tuple[list[dict], Path | None]:
    """Check every image and its label file, through the cache. -> (entries, cache file if read)."""
    cache_file = cache_file_for(image_files)
    file_hash = files_hash(image_files)
    entries = _read_cache(cache_file, file_hash)
    if entries is not None and [e["image"] for e in entries] == image_files:
        return entries, cache_file
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        entries = list(pool.map(_check_pair, image_files, chunksize=64))
    _write_cache(cache_file, file_hash, entries)
    return entries, None


def check_classes(entries: list[dict], nc: int | None) -> None:
    """Mark entries with a class id >= nc as corrupt (in place)."""
    if nc is None:
        return
    for entry in entries:
        if entry["error"] or not entry["labels"]:
            continue
        classes = [int(row[0]) for row in entry["labels"]]
        if max(classes) >= nc:
            row = int(np.argmax(classes)) + 1
            entry["error"] = (
                f"{label_file_for(entry['image'])}: label row {row} has class id {max(classes)} but the data "
                f"YAML says nc={nc}"
            )


def summarize(entries: list[dict], prefix: str, cache_file: Path | None, verbose: bool = True) -> None:
    """One warning per bad file, then one summary line."""
    corrupt = backgrounds = 0
    for entry in entries:
        if entry["error"]:
            corrupt += 1
            if verbose:
                LOGGER.warning(f"{prefix}skipping {entry['image']}: {entry['error']}.")
            continue
        if entry["note"] and verbose:
            LOGGER.warning(f"{prefix}{label_file_for(entry['image'])}: {entry['note']}.")
        backgrounds += not entry["labels"]
    usable = [entry for entry in entries if not entry["error"]]
    if verbose and usable and not any(entry.get("label_file") for entry in usable):
        LOGGER.warning(
            f"{prefix}no label file was found for any of the {len(usable)} images, so all train as "
            f"backgrounds; YOLO labels are expected beside an images/ folder, e.g. "
            f"{label_file_for(usable[0]['image'])}."
        )
    if verbose:
        source = f" (labels cached in {cache_file})" if cache_file else ""
        advice = " (see warnings)" if corrupt else ""
        LOGGER.info(
            f"{prefix}{len(entries)} images, {backgrounds} backgrounds, {corrupt} corrupt{advice}{source}"
        )


def no_training_labels(entries: list[dict], sources, prefix: str) -> str:
    """The one sentence that stops training on a split where no usable image has a label row, or ""."""
    if any(entry["labels"] for entry in entries if not entry["error"]):
        return ""
    refused = [entry for entry in entries if entry["error"]]
    if not refused:
        return (
            f"{prefix}no label to train on in {sources}: none of its {len(entries)} images has a label row "
            f"(e.g. {label_file_for(entries[0]['image'])} is missing or empty); add YOLO label files there."
        )
    first = refused[0]
    return (
        f"{prefix}no label to train on in {sources}: {len(refused)} of its {len(entries)} images were "
        f"refused (the first, {first['image']}, for {first['error']}) and the others have no label rows; "
        "fix the label files (each is named in the warnings above)."
    )


def write_yolo_labels(
    path: str | Path, detections: np.ndarray | torch.Tensor, original_hw: tuple[int, int], save_conf: bool
) -> None:
    """Write detections (n, 6) x1, y1, x2, y2 (original pixels), score, class as YOLO rows
    'class cx cy w h [conf]', normalized to the original image (height, width), six decimals; tracked
    detections (n, 7) add their track ID last: 'class cx cy w h [conf] id'."""
    boxes = box_xyxy_to_normxywh(detections[:, :4], original_hw[1], original_hw[0])
    rows = []
    ids = detections[:, 6].tolist() if detections.shape[1] > 6 else [None] * len(detections)
    for box, score, cls, track in zip(
        boxes.tolist(), detections[:, 4].tolist(), detections[:, 5].tolist(), ids
    ):
        values = [f"{int(cls)}", *(f"{v:.6f}" for v in box)] + ([f"{score:.6f}"] if save_conf else [])
        rows.append(" ".join(values + ([] if track is None else [f"{int(track)}"])) + "\n")
    Path(path).write_text("".join(rows))


def mot_rows(rows: np.ndarray) -> str:
    """MOTChallenge text (comma-separated) for rows (n, >= 7): frame, ID, left, top, width, height (two
    decimals), then the rest (ground truth: 1, class, visibility; results: score, -1, -1, -1) as short as
    they print."""
    lines = []
    for row in rows.tolist():
        fields = [f"{int(row[0])}", f"{int(row[1])}", *(f"{v:.2f}" for v in row[2:6])]
        fields += [f"{v:g}" if v != int(v) else f"{int(v)}" for v in row[6:]]
        lines.append(",".join(fields) + "\n")
    return "".join(lines)
