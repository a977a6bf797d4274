"""Inference sources: files (an image, a folder, a glob, a .txt list of paths, a video) and live streams
(a webcam index, an rtsp://, rtmp:// or http(s):// URL, a .streams file listing several).

``LoadSources(source)`` resolves the source to a sorted list of files once, then yields one
``SourceItem`` per image or video frame, as a BGR uint8 array (H, W, 3) as OpenCV reads it.
A file that cannot be read is reported with a warning naming it and skipped (``skipped`` lists them).

``LoadStreams(source)`` opens every stream (``is_stream``) through OpenCV (its FFmpeg backend for URLs)
and starts one reader thread per stream that keeps only the newest frame: a model slower than the
camera drops frames, it never falls behind. Each step of its iteration is a list holding the newest
unseen frame of every stream that has one, to run as one batch. A live stream that drops is reopened
with backoff, named in the log; a finite one (a video file or a video URL, played at its frame rate as
a camera would deliver it) ends after its last frame. Iteration ends when every stream has ended, or
at ``close()``. No URL is fetched unless it is the source.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from utils.data.config import IMAGE_SUFFIXES, read_path_list
from utils.errors import DataError, DataNotFoundError, ImageError, ImageNotFoundError
from utils.log import masked_url

LOGGER = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
STREAMS_SUFFIX = ".streams"  # a text file listing one stream a line, as in yolov5
# FFmpeg gives up opening or reading a URL after this long; a read that fails drops the stream
URL_TIMEOUT_MS = 10_000


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
    frames: int | None = None  # None for a live stream
    fps: float | None = None
    stream: str | None = None  # a stream's output name (``stream_names``); None for a file
    captured: float | None = None  # a stream frame's time.monotonic() when it was read

    @property
    def is_video(self) -> bool:
        return self.frame is not None

    @property
    def timestamp(self) -> float | None:
        """Seconds into the stream or video (when the frame was read, or frame / fps); None for an image."""
        if self.captured is not None:
            return self.captured
        return None if self.frame is None else self.frame / (self.fps or 30.0)


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

    def __init__(self, source: str | Path, vid_stride: int = 1) -> None:
        self.source = str(source)
        self.files = resolve_source(source)
        self.vid_stride = check_vid_stride(vid_stride)
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
            ok, image, frame = next_kept_frame(capture, 0, self.vid_stride)
            if not ok:
                reason = "it cannot be read as a video; remove or replace the file."
                if frame:
                    reason = f"it has {frame} frames, fewer than --vid-stride {self.vid_stride}."
                self._skip(path, reason)
                return
            while ok:
                yield SourceItem(str(path), image, index, count, frame, max(frames, frame), fps)
                ok, image, frame = next_kept_frame(capture, frame, self.vid_stride)
        finally:
            capture.release()


def next_kept_frame(
    capture: cv2.VideoCapture, frame: int, stride: int
) -> tuple[bool, np.ndarray | None, int]:
    """Advance a capture that has given ``frame`` frames to the next one --vid-stride keeps (numbers that
    divide by ``stride``, as yolov5 keeps them: stride, 2 x stride, ...), grab()bing those between without
    decoding them. -> (whether it was read, the image, the number of frames read so far)."""
    while (frame + 1) % stride:
        if not capture.grab():
            return False, None, frame
        frame += 1
    ok, image = capture.read()
    return ok, image, frame + ok


def check_vid_stride(vid_stride: int) -> int:
    if not isinstance(vid_stride, int) or vid_stride < 1:
        raise DataError(
            f"--vid-stride {vid_stride} is not usable; give a whole number of at least 1 (1: every frame)."
        )
    return vid_stride


def is_stream(source: str | Path) -> bool:
    """Whether a source is read live: a webcam index ("0"), an rtsp/rtmp/http(s) URL or a .streams file."""
    text = str(source).strip()
    return text.isdigit() or text.lower().startswith(STREAM_SCHEMES) or text.lower().endswith(STREAMS_SUFFIX)


def stream_list(source: str | Path) -> list[str]:
    """The streams of a live source: a .streams file's lines (blank lines and # comments left out), else the
    source itself. Raises DataNotFoundError / DataError naming the file."""
    text = str(source).strip()
    if not text.lower().endswith(STREAMS_SUFFIX):
        return [text]
    path = Path(text)
    if not path.is_file():
        raise DataNotFoundError(f"streams file {path} does not exist; check the path.")
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    listed = [line for line in lines if line and not line.startswith("#")]
    if not listed:
        raise DataError(f"streams file {path} lists no streams; write one webcam index or URL a line.")
    return listed


def stream_names(sources: list[str]) -> list[str]:
    """Each stream's output name, as yolov5 names it (a webcam "0", a URL's last path part without its
    suffix, else its host), made safe for a file name, with _<n> added where two streams would share one."""
    names = []
    for source in sources:
        address = re.sub(r"^[a-z]+://", "", source.split("?")[0].rstrip("/"), flags=re.IGNORECASE)
        last = Path(address.rsplit("@", 1)[-1]).name if address else ""
        stem = Path(last).stem if Path(last).suffix.lower() in VIDEO_SUFFIXES + (".mjpg", ".mjpeg") else last
        names.append(re.sub(r"[^\w.-]+", "_", stem).strip("._") or "stream")
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{name}_{k}" if name in repeated else name for k, name in enumerate(names)]


def describe_stream(source: str) -> str:
    """A stream as the log names it: "webcam 0", or its URL with any password masked."""
    return f"webcam {source}" if source.isdigit() else masked_url(source)


def open_capture(source: str) -> cv2.VideoCapture | None:
    """An opened OpenCV capture of a stream (a URL through FFmpeg, with open and read timeouts), or None."""
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
    elif source.lower().startswith(STREAM_SCHEMES):
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            URL_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            URL_TIMEOUT_MS,
        ]
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
    else:
        capture = cv2.VideoCapture(source)
    if capture.isOpened():
        return capture
    capture.release()
    return None


def _unopened_sentence(source: str) -> str:
    if source.isdigit():
        return f"webcam {source} cannot be opened: no camera answers at index {source} here; check --source."
    if source.lower().startswith(STREAM_SCHEMES):
        return (
            f"stream {describe_stream(source)} cannot be opened: OpenCV's FFmpeg backend got no video from "
            "it; check the address and that this machine can reach it."
        )
    return f"stream {source} cannot be opened: it is no video file OpenCV can read; check the path."


class StreamReader(threading.Thread):
    """One stream's reader thread: keeps the newest frame in ``latest`` (see ``LoadStreams``)."""

    BACKOFF = (0.5, 8.0)  # first and longest wait between reconnection attempts, seconds

    def __init__(self, source: str, name: str, index: int, count: int, streams: LoadStreams) -> None:
        super().__init__(name=f"stream-{index}", daemon=True)
        self.source, self.stream, self.index, self.count, self.owner = source, name, index, count, streams
        self.capture = streams.opener(source)
        if self.capture is None:
            raise DataError(_unopened_sentence(source))
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 30.0
        frames = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frames = int(frames) if math.isfinite(frames) and 0 < frames < 1e9 else None  # None: live
        self.latest: SourceItem | None = None  # the newest frame not yet taken
        self.frame = 0  # frames read from the source so far
        self.kept = self.dropped = 0  # frames kept (every --vid-stride-th), and those replaced untaken
        self.ended = False

    def run(self) -> None:
        try:
            while self._read() and self.frames is None and self._reconnect():
                pass
        except Exception as error:  # a reader must never die silently: its stream ends, named
            LOGGER.warning("WARNING: stream %d (%s) ended: reading it failed with %s: %s", self.index,
                           describe_stream(self.source), type(error).__name__, error)  # fmt: skip
        finally:
            if self.capture is not None:
                self.capture.release()
            with self.owner.fresh:
                self.ended = True
                self.owner.fresh.notify_all()

    def _read(self) -> bool:
        """Read until the capture fails; a finite source is paced at its frame rate. -> False if stopped."""
        stride, stopped, started, paced = self.owner.vid_stride, self.owner.stopped, time.monotonic(), 0
        while not stopped.is_set():
            ok, image, self.frame = next_kept_frame(self.capture, self.frame, stride)
            if not ok:
                break
            self._publish(image)
            if self.frames is not None:  # a file or video URL: deliver it as a camera would
                paced += stride
                stopped.wait(max(started + paced / self.fps - time.monotonic(), 0.0))
        if self.frames is not None and not stopped.is_set():
            LOGGER.info(
                "stream %d (%s) ended after %d frames", self.index, describe_stream(self.source), self.frame
            )
        return not stopped.is_set()

    def _publish(self, image: np.ndarray) -> None:
        item = SourceItem(self.source, image, self.index, self.count, self.frame, self.frames, self.fps,
                          self.stream, time.monotonic())  # fmt: skip
        with self.owner.fresh:
            self.dropped += self.latest is not None
            self.kept += 1
            self.latest = item
            self.owner.fresh.notify_all()

    def take(self) -> SourceItem | None:
        """The newest frame not yet taken, if any (call holding ``owner.fresh``)."""
        item, self.latest = self.latest, None
        return item

    def _reconnect(self) -> bool:
        """Reopen a dropped live stream, waiting longer after each failed attempt, until it opens (True) or
        ``reconnect_timeout`` seconds pass or the run stops (False)."""
        named = f"stream {self.index} ({describe_stream(self.source)})"
        timeout, stopped = self.owner.reconnect_timeout, self.owner.stopped
        LOGGER.warning(
            "WARNING: %s dropped after frame %d; reconnecting for up to %g s", named, self.frame, timeout
        )
        self.capture.release()
        self.capture, deadline, wait, attempts = None, time.monotonic() + timeout, self.BACKOFF[0], 0
        while time.monotonic() < deadline:
            if stopped.wait(min(wait, max(deadline - time.monotonic(), 0.0))):
                return False
            attempts += 1
            self.capture = self.owner.opener(self.source)
            if self.capture is not None:
                LOGGER.info("%s reconnected after %d attempt(s)", named, attempts)
                return True
            wait = min(wait * 2, self.BACKOFF[1])
        LOGGER.warning(
            "WARNING: %s ended: it could not be reopened in %g s (%d attempts)", named, timeout, attempts
        )
        return False


class LoadStreams:
    """Read live streams, one reader thread each (see module docstring). A stream that cannot be opened
    raises DataError naming it, before any thread starts. opener: a source -> an opened capture (or None);
    a benchmark's stand-in camera goes here."""

    def __init__(
        self,
        source: str | Path,
        vid_stride: int = 1,
        reconnect_timeout: float = 300.0,
        opener: Callable[[str], cv2.VideoCapture | None] = open_capture,
    ) -> None:
        self.source, self.opener = str(source), opener
        self.sources = stream_list(source)
        self.names = stream_names(self.sources)
        self.vid_stride = check_vid_stride(vid_stride)
        self.reconnect_timeout = float(reconnect_timeout)
        self.fresh = threading.Condition()  # notified on every new frame and when a stream ends
        self.stopped = threading.Event()
        self.readers: list[StreamReader] = []
        count = len(self.sources)
        try:
            for index, (stream, name) in enumerate(zip(self.sources, self.names), start=1):
                self.readers.append(StreamReader(stream, name, index, count, self))
                reader = self.readers[-1]
                shown = f"{reader.frames} frames" if reader.frames is not None else "live"
                LOGGER.info(
                    "%d/%d: %s opened, %.0f fps, %s", index, count, describe_stream(stream), reader.fps, shown
                )
        except BaseException:
            self.close()
            raise
        for reader in self.readers:
            reader.start()

    def __len__(self) -> int:
        return len(self.readers)

    def __iter__(self) -> Iterator[list[SourceItem]]:
        def ready() -> bool:
            readers = self.readers
            return (
                self.stopped.is_set()
                or any(r.latest is not None for r in readers)
                or all(r.ended for r in readers)
            )

        while True:
            with self.fresh:
                while not self.fresh.wait_for(ready, timeout=0.5):  # timed: Ctrl-C is never held up
                    pass
                batch = [item for item in (r.take() for r in self.readers) if item is not None]
            if batch and not self.stopped.is_set():
                yield batch
            elif self.stopped.is_set() or all(r.ended for r in self.readers):
                return

    @property
    def counts(self) -> dict[str, tuple[int, int]]:
        """Per stream name: (frames kept, frames dropped because a newer one replaced them untaken)."""
        return {r.stream: (r.kept, r.dropped) for r in self.readers}

    def close(self) -> None:
        """Stop every reader and release its capture (a reader blocked in a read is left to its timeout)."""
        self.stopped.set()
        with self.fresh:
            self.fresh.notify_all()
        for reader in self.readers:
            if reader.is_alive():
                reader.join(timeout=2.0)
            elif reader.capture is not None and not reader.ended:  # never started
                reader.capture.release()
