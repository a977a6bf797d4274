"""Inference sources: an image, a folder, a glob, a .txt list of paths, or a video.

``LoadSources(source)`` resolves the source to a sorted list of files once, then yields one
``SourceItem`` per image or video frame, as a BGR uint8 array (H, W, 3) as OpenCV reads it.
A file that cannot be read is reported with a warning naming it and skipped (``skipped`` lists them).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.data.config import IMAGE_SUFFIXES, read_path_list
from utils.errors import DataNotFoundError, ImageError, ImageNotFoundError

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


def is_truncated_jpeg(path: str | Path) -> bool:
    """Whether a file that starts like a JPEG lacks the end-of-image marker (a cut-off download or copy)."""
    with open(path, "rb") as file:
        if file.read(2) != b"\xff\xd8":
            return False
        file.seek(-2, os.SEEK_END)
        return file.read() != b"\xff\xd9"


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 (H, W, 3) as cv2.imread gives it (EXIF orientation applied). A truncated JPEG is
    decoded as far as it goes, with a warning naming it. Raises ImageNotFoundError / ImageError."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image; pass the image files in it.")
    if not path.is_file():
        raise ImageNotFoundError(f"image {path} does not exist; check the path.")
    image = cv2.imread(str(path))
    if image is None:
        raise ImageError(f"{path} cannot be read as an image; remove or replace the file.")
    if is_truncated_jpeg(path):
        LOGGER.warning(
            "WARNING: %s is a truncated JPEG (no end-of-image marker), its missing part is decoded as gray; "
            "re-save or replace the file.",
            path,
        )
    return image


def relative_output_paths(files: list[Path]) -> list[Path]:
    """Each file's path relative to the deepest folder holding them all: outputs written at these paths
    under a run folder keep same-named files from different folders apart (a/im0.jpg, b/im0.jpg)."""
    absolute = [Path(os.path.abspath(f)) for f in files]
    if not absolute:
        return []
    common = os.path.commonpath([str(p.parent) for p in absolute])
    return [p.relative_to(common) for p in absolute]


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
        self.skipped: list[str] = []  # files that could not be read, each named in a warning

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        count = len(self.files)
        for index, path in enumerate(self.files, start=1):
            if is_video(path):
                yield from self._video_frames(path, index, count)
                continue
            try:
                image = read_image(path)
            except ImageError as error:
                self._skip(path, str(error))
                continue
            yield SourceItem(str(path), image, index, count)

    def _skip(self, path: Path, reason: str) -> None:
        LOGGER.warning("WARNING: skipping %s: %s", path, reason)
        self.skipped.append(str(path))

    def _video_frames(self, path: Path, index: int, count: int) -> Iterator[SourceItem]:
        capture = cv2.VideoCapture(str(path))
        try:
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
            ok, image = capture.read()
            if not ok:
                self._skip(path, "it cannot be read as a video; remove or replace the file.")
                return
            frame = 0
            while ok:
                frame += 1
                yield SourceItem(str(path), image, index, count, frame, max(frames, frame), fps)
                ok, image = capture.read()
        finally:
            capture.release()
