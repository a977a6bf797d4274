"""The disk image cache (``cache="disk"``): each image decoded and resized once, stored as a .npy file beside
it, and read back on later epochs and runs instead of decoding the image again.

The file is named after the image and the resize it holds (``im0.jpg`` -> ``im0.jpg.640-linear.npy``)
and carries the image's modification time as its own, so an image that changes is decoded and cached
again. Writes go through utils.paths.atomic_open: a killed run leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from utils.paths import atomic_open

INTERPOLATION_NAMES = {cv2.INTER_LINEAR: "linear", cv2.INTER_AREA: "area"}


def cache_file_for(image_file: str | Path, img_size: int, interpolation: int) -> Path:
    """Where the image resized to img_size (long side) with that cv2 interpolation is cached."""
    image_file = Path(image_file)
    return image_file.with_name(f"{image_file.name}.{img_size}-{INTERPOLATION_NAMES[interpolation]}.npy")


def is_fresh(cache_file: Path, image_file: str | Path) -> bool:
    """Whether cache_file exists and was written from the image as it is now (same modification time)."""
    try:
        return os.stat(cache_file).st_mtime_ns == os.stat(image_file).st_mtime_ns
    except OSError:
        return False


def write(cache_file: Path, image: np.ndarray, image_file: str | Path) -> None:
    """Store image atomically as cache_file, stamped with image_file's modification time. Raises OSError."""
    source = os.stat(image_file)
    with atomic_open(cache_file, "wb", durable=False) as file:  # a cache: rebuilt if lost, no fsync
        np.save(file, image)
        file.flush()  # the stamp goes on last: nothing written after it may move the modification time
        os.utime(file.fileno(), ns=(source.st_atime_ns, source.st_mtime_ns))


def read(cache_file: Path, expected_hw: tuple[int, int]) -> np.ndarray | None:
    """The cached image, or None when the file is unreadable or not of the expected (h, w)."""
    try:
        image = np.load(cache_file)
    except (OSError, ValueError):
        return None
    return image if image.ndim == 3 and tuple(image.shape[:2]) == tuple(expected_hw) else None
