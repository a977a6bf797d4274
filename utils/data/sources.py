"""Inference sources: an image, a folder, a glob, a .txt list of paths, or a video.

``LoadSources(source)`` resolves the source to a sorted list of files once, then yields one
``SourceItem`` per image or video frame, as a BGR uint8 array (H, W, 3) as OpenCV reads it.
A file that cannot be read is reported with a warning naming it and skipped.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.data.config import IMAGE_SUFFIXES, read_path_list
from utils.errors import DataNotFoundError

LOGGER = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm")


@dataclass
class SourceItem:
    """One image, or one frame of a video.

    index/count: 1-based position of the file among the source's files. frame/frames: 1-based
    frame number and frame count for a video (None for an image). fps: the video's frame rate.
    """

    path: str
    image: np.ndarray  # (H, W, 3) uint8 BGR
    index: int
    count: int
    frame: int | None = None
    frames: int | None = None
    fps: float | None = None

    @property
    def is_video(self) -> bool:
        return self.frame is not None


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() in VIDEO_SUFFIXES


def resolve_source(source: str | Path) -> list[Path]:
    """Source -> the list of files to read, in order. Raises FileNotFoundError (one sentence)."""
    text = str(source)
    if any(char in text for char in "*?["):
        files = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if _is_media(Path(p))]
        if not files:
            raise DataNotFoundError(f"no image or video matches the pattern {text}; check the glob.")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_media(p))
        if not files:
            raise DataNotFoundError(
                f"folder {path} holds no images or videos; pass a folder with some in it."
            )
        return files
    if not path.is_file():
        raise DataNotFoundError(
            f"source {path} does not exist; pass an image, folder, glob, .txt list or video."
        )
    if path.suffix.lower() == ".txt":
        return read_path_list(path)
    return [path]


class LoadSources:
    """Iterate over the images and video frames of a source (see module docstring)."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.files = resolve_source(source)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        count = len(self.files)
        for index, path in enumerate(self.files, start=1):
            if is_video(path):
                yield from self._video_frames(path, index, count)
                continue
            image = cv2.imread(str(path)) if path.is_file() else None
            if image is None:
                reason = "cannot be read as an image" if path.is_file() else "does not exist"
                LOGGER.warning("WARNING: skipping %s: it %s; remove or replace the file.", path, reason)
                continue
            yield SourceItem(str(path), image, index, count)

    def _video_frames(self, path: Path, index: int, count: int) -> Iterator[SourceItem]:
        capture = cv2.VideoCapture(str(path))
        try:
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
            ok, image = capture.read()
            if not ok:
                LOGGER.warning(
                    "WARNING: skipping %s: it cannot be read as a video; remove or replace the file.", path
                )
                return
            frame = 0
            while ok:
                frame += 1
                yield SourceItem(str(path), image, index, count, frame, max(frames, frame), fps)
                ok, image = capture.read()
        finally:
            capture.release()
