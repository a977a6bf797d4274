"""Property-based fuzzing of the dataset scan (hypothesis): generated label files (box and polygon rows;
NaN, inf, empty, huge, negative, non-numeric, wrong column counts, odd polygon coordinates, unicode, mixed
line endings, binary) and image bytes (valid, truncated, empty, random) never crash it; every bad file is
named in exactly one warning, and every good file is kept with exactly its labels (a polygon's box is its
extent) and polygon points."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.data.labels import check_classes, scan_files, summarize

NC = 3
_ok, _png = cv2.imencode(".png", np.full((24, 32, 3), 90, np.uint8))
_ok, _jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
GOOD_IMAGE = _png.tobytes()
BAD_IMAGES = st.one_of(
    st.just(b""),
    st.integers(2, len(_jpeg) - 3).map(lambda n: _jpeg.tobytes()[:n]),  # truncated JPEG
    st.binary(min_size=1, max_size=64),  # random bytes
)

coordinate = st.floats(0.3, 0.7).map(lambda v: f"{v:.4f}")
size = st.floats(0.05, 0.5).map(lambda v: f"{v:.4f}")
GOOD_ROW = st.tuples(st.integers(0, NC - 1).map(str), coordinate, coordinate, size, size).map(" ".join)
POINTS = st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=6).filter(
    lambda points: len({x for x, _ in points}) > 1 and len({y for _, y in points}) > 1  # not flat
)
GOOD_POLYGON = st.tuples(st.integers(0, NC - 1).map(str), POINTS).map(
    lambda t: " ".join([t[0], *(v for point in t[1] for v in point)])
)
BAD_VALUE = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "1e999", "-0.5", "1.5", "abc", "0x1", "٣.٥", "∞", "—"]
)
BAD_ROW = st.one_of(
    st.tuples(GOOD_ROW, st.integers(1, 4), BAD_VALUE).map(  # one coordinate replaced by a bad value
        lambda t: " ".join(t[0].split()[: t[1]] + [t[2]] + t[0].split()[t[1] + 1 :])
    ),
    st.tuples(st.sampled_from(["-1", "1.5", str(NC), "99", "nan"]), GOOD_ROW).map(  # a bad class id
        lambda t: " ".join([t[0]] + t[1].split()[1:])
    ),
    st.lists(coordinate, min_size=1, max_size=8).filter(lambda v: len(v) != 5).map(" ".join),  # columns
    GOOD_POLYGON.map(lambda row: row + " 0.5"),  # an odd number of polygon coordinates
    st.tuples(GOOD_POLYGON, st.sampled_from(["1.5", "-0.5", "nan", "x"])).map(  # a bad polygon point
        lambda t: " ".join(t[0].split()[:-1] + [t[1]])
    ),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
        lambda t: t.strip() and "\n" not in t and "\r" not in t and len(t.split()) != 5
    ),
)
NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def sample(draw) -> dict:
    """One image and label file: bytes, label text, and whether it must be kept (and with what rows)."""
    image_good = draw(st.booleans())
    image = GOOD_IMAGE if image_good else draw(BAD_IMAGES)
    kind = draw(st.sampled_from(["good", "bad", "empty", "missing", "binary"]))
    good_rows = draw(st.lists(st.one_of(GOOD_ROW, GOOD_POLYGON), max_size=4, unique_by=lambda r: r))
    if kind == "bad":
        rows = good_rows + [draw(BAD_ROW)]
        rows = draw(st.permutations(rows))
    else:
        rows = good_rows if kind == "good" else []
    newline = draw(NEWLINE)
    label = {"missing": None, "binary": b"\xff\xfe\x00\x81" + draw(st.binary(max_size=16))}.get(
        kind, newline.join(rows) + draw(st.sampled_from(["", newline]))
    )
    labels_good = kind != "bad" and kind != "binary"
    return {
        "image": image,
        "label": label,
        "good": image_good and labels_good,
        "rows": [expected_row(row) for row in rows] if image_good and kind == "good" else [],
    }


def expected_row(row: str) -> tuple[list[float], list[float]]:
    """The label a good row gives and its polygon points ([] for a box): a polygon's box is its extent."""
    values = [float(v) for v in row.split()]
    if len(values) == 5:
        return values, []
    xs, ys = values[1::2], values[2::2]
    box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    return [values[0], *box], values[1:]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(samples=st.lists(sample(), min_size=1, max_size=6))
def test_scan_never_crashes_names_every_bad_file_and_keeps_every_good_one(samples, caplog):
    caplog.clear()
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = Path(tmp) / "images", Path(tmp) / "labels"
        images.mkdir()
        labels.mkdir()
        files = []
        for index, item in enumerate(samples):
            image_file = images / f"im{index}.png"
            image_file.write_bytes(item["image"])
            files.append(str(image_file))
            label = item["label"]
            if isinstance(label, bytes):
                (labels / f"im{index}.txt").write_bytes(label)
            elif label is not None:
                (labels / f"im{index}.txt").write_bytes(label.encode("utf-8"))
        with caplog.at_level(logging.WARNING):
            entries, _ = scan_files(files)
            check_classes(entries, NC)
            summarize(entries, "", None)
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        for item, file, entry in zip(samples, files, entries):
            named = [message for message in warnings if f"{file}:" in message]
            if item["good"]:
                assert not entry["error"] and not named, (file, entry, item)
                labels = [labels for labels, _ in item["rows"]]
                segments = [points for _, points in item["rows"]]
                assert entry["labels"] == labels, (entry["labels"], labels)
                assert entry["segments"] == (segments if any(segments) else []), (entry, item)
            else:
                assert entry["error"] and len(named) == 1, (file, entry, warnings, item)
