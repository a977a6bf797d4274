"""Property-based fuzzing of the dataset scan (hypothesis): generated label files (NaN, inf, empty, huge,
negative, non-numeric, wrong column counts, unicode, mixed line endings, binary) and image bytes
(valid, truncated, empty, random) never crash it; every bad file is named in exactly one warning, and
every good file is kept with exactly its labels."""

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
    good_rows = draw(st.lists(GOOD_ROW, max_size=4, unique_by=lambda r: r))
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
        "rows": [[float(v) for v in row.split()] for row in rows] if image_good and kind == "good" else [],
    }


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
                assert entry["labels"] == item["rows"], (entry["labels"], item["rows"])
            else:
                assert entry["error"] and len(named) == 1, (file, entry, warnings, item)
