"""The images every INT8 path is calibrated on: chosen evenly from a dataset split, a folder or a list, and
letterboxed as the network input."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.data.config import image_files_from_sources, load_data_config
from utils.data.preprocess import image_to_tensor, letterbox
from utils.errors import DataError, DataNotFoundError

LOGGER = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 128


def calibration_files(ckpt: dict, calib_data: str | Path | None, count: int) -> list[str]:
    """Up to ``count`` images evenly spread over the calibration source: ``calib_data`` (a dataset YAML,
    whose train split is used, or a folder or .txt list of images), else the checkpoint's training split.
    Raises DataError naming what was looked at when no image is there: never random calibration."""
    if calib_data is not None:
        source = Path(calib_data)
        sources = load_data_config(source)["train"] if source.suffix in (".yaml", ".yml") else [str(source)]
        described = str(calib_data)
    else:
        sources = (ckpt.get("data") or {}).get("train") or []
        described = f"the checkpoint's training split ({', '.join(map(str, sources)) or 'not recorded'})"
    try:
        files = image_files_from_sources(sources) if sources else []
    except DataNotFoundError:
        files = []
    if not files:
        raise DataError(
            f"INT8 calibration needs images and none were found in {described}; pass calibration images "
            "with --calib-data (a dataset YAML, an image folder or a .txt list)."
        )
    step = max(len(files) / count, 1.0)
    return [files[int(i * step)] for i in range(min(count, len(files)))]


def calibration_batches(files: list[str], img_size: int) -> Iterator[np.ndarray]:
    """Each file letterboxed to img_size x img_size as the network input: float32 (1, 3, H, W) RGB 0..1."""
    for file in files:
        image = cv2.imread(file)
        if image is None:
            LOGGER.warning("calibration: skipping %s, which cannot be read.", file)
            continue
        image = letterbox(image, img_size, auto=False)[0]
        yield image_to_tensor(image).numpy()[None].astype(np.float32) / 255
