"""Run a detector on images, folders, globs, .txt lists of paths, videos, webcams and network streams.

    python detect.py --weights best_fused.pt --source data/images/
    python detect.py --weights best_fused.onnx --source "clips/*.mp4" --conf-thres 0.4
    python detect.py --weights best_fused.pt --source 0 --view-img            # webcam 0, in a window
    python detect.py --weights best_fused.pt --source rtsp://cam/live --track # persistent object IDs
    python detect.py --weights best_fused.pt --source list.streams            # several streams at once

Weights may be a training-form or fused .pt checkpoint (ours or yolov5's) or any export of convert.py (its
formats: utils.deploy.formats; --weights --help lists them).
Annotated images (and videos) go to runs/detect/exp; --save-txt adds YOLO label files
(class cx cy w h [conf] [track ID], normalized to the original image) in labels/. Sources from several
folders keep their folders below the common one, so same-named files stay apart. A file that cannot be
read or processed is named in a warning and the others are still processed.

Live sources (a webcam index, rtsp:// rtmp:// http(s):// URLs, a .streams file listing several) are read
by one thread per stream that keeps only the newest frame (utils.data.sources.LoadStreams), so a slow
model drops frames rather than falling behind; the newest frames of all streams run as one batch. A
dropped stream reconnects; the run ends when every stream has ended, or on Ctrl-C, SIGTERM or the q key
of a --view-img window, which all finish the videos so that they play.
--track follows objects with ByteTrack (utils.deploy.tracking; pip install -r requirements-track.txt):
each box gets an ID, drawn on the frames, added to --save-txt rows and written per video or stream to
tracks/<name>.txt in MOTChallenge's format (frame, ID, left, top, width, height, score, -1, -1, -1).
"""

from __future__ import annotations

import collections
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

from utils.cli import (
    augment_option,
    build_parser,
    choice_flags,
    device_option,
    exist_ok_option,
    half_option,
    name_option,
    option,
    project_option,
    script_main,
)
from utils.data.sources import LoadSources, LoadStreams, SourceItem, is_stream
from utils.deploy.detect_outputs import DetectionWriter, OutputOptions
from utils.deploy.detections import describe
from utils.deploy.detector import Detector
from utils.deploy.formats import loadable, runtime_flags
from utils.deploy.tracking import import_trackers
from utils.errors import DataError
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)


@dataclass
class DetectOptions:
    """What detect.py's flags set (utils.cli.option); yolov5's flags it refuses in one sentence or accepts
    and drops (utils.cli.build_parser)."""

    REFUSED: ClassVar[dict[str, str]] = {
        "--save-csv": "is not implemented; --save-txt --save-conf writes each image's boxes and scores.",
        "--save-format": "is not implemented: --save-txt writes YOLO-format rows only; drop it.",
        "--visualize": "(feature-map plots) is not implemented; drop it.",
    }  # fmt: skip
    IGNORED: ClassVar[dict[str, str]] = {
        "--data": "the class names travel with the weights, which is all detect.py would read from it",
        "--update": "a finished run's checkpoints already hold no optimizer state",
    }

    weights: str | Path = option(
        "", f"a .pt checkpoint (ours, either form, or yolov5's) or an export of convert.py: {loadable()}",
        required=True,
    )  # fmt: skip
    source: str | Path = option(
        "data/images",
        "image, folder, glob, .txt list, video, webcam index (0), rtsp/rtmp/http(s) URL or .streams file",
    )
    img_size: int | list[int] | None = option(
        None, "h [w] (default: the size the model was trained or exported at, else 640)",
        "--img", "--img-size", "--imgsz", nargs="+", type=int,
    )  # fmt: skip
    conf_thres: float = option(0.25, None)
    iou_thres: float = option(0.45, None)
    max_det: int = option(1000, None)
    classes: list[int] | None = option(None, "keep only these class indices", nargs="+", type=int)
    agnostic_nms: bool = option(False, "suppress across classes")
    device: str = device_option(help="cpu or a CUDA index such as 0 (default: cuda if present)")
    half: bool = half_option()
    runtime: str | None = choice_flags(runtime_flags())  # a runtime of another format (utils.deploy.formats)
    augment: bool = augment_option()
    view_img: bool = option(False, "show the annotated frames, a window per source (q ends the run)")
    vid_stride: int = option(1, "detect on every Nth frame of a video or stream")
    track: bool = option(False, "follow objects with ByteTrack: IDs on the frames, in labels/ and tracks/")
    reconnect_timeout: float = option(
        300.0, "seconds a dropped live stream tries to reconnect before it ends"
    )
    save_txt: bool = option(False, "write YOLO label files to labels/")
    save_conf: bool = option(False, "add the confidence to --save-txt rows")
    save_crop: bool = option(False, "write each box's crop to crops/<class>/")
    nosave: bool = option(False, "do not write annotated images or videos")
    project: str | Path = project_option("runs/detect")
    name: str = name_option()
    exist_ok: bool = exist_ok_option()
    line_thickness: int | None = option(
        None, "width of the box lines in pixels (default: in proportion to the image)", type=int
    )
    hide_labels: bool = option(False, None)
    hide_conf: bool = option(False, None)

    def outputs(self) -> OutputOptions:
        return OutputOptions(self.save_txt, self.save_conf, self.save_crop, self.nosave, self.line_thickness,
                             self.hide_labels, self.hide_conf, self.view_img)  # fmt: skip

    def detector(self) -> Detector:
        """A Detector with these weights, device, precision and settings."""
        detector = Detector(self.weights, self.device, self.half, self.augment, self.runtime)
        detector.size, detector.classes, detector.agnostic = self.img_size, self.classes, self.agnostic_nms
        detector.conf, detector.iou, detector.max_det = self.conf_thres, self.iou_thres, self.max_det
        detector.check_classes(self.classes)
        return detector


def parse_args(argv: list[str] | None = None) -> DetectOptions:
    parser = build_parser(DetectOptions, __doc__)
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error("--img takes one size or two (height width)")
    return DetectOptions(**vars(args))


def run(weights: str | Path | DetectOptions, source: str | Path = "data/images", **values) -> list[dict]:
    """Detect on every image / frame of ``source`` with ``utils.deploy.detector.Detector``.

    Returns one dict per image or frame: "path", "frame" (None for images), "shape" (h, w) of the
    original, "detections" np.ndarray (n, 6) x1, y1, x2, y2 (original pixels), score, class ((n, 7) with
    the track ID last under --track); for live streams, the last LIVE_RESULTS frames only.
    ``weights`` and ``source`` (and the other DetectOptions fields as ``values``), or a whole DetectOptions.
    """
    options = weights if isinstance(weights, DetectOptions) else DetectOptions(weights, source, **values)
    detector = options.detector()
    detector.input_hw()  # a size that cannot be used is one sentence before any output folder is made
    if options.track:
        import_trackers()  # the library is there, or one sentence before any source opens
    live = is_stream(options.source)
    if live:
        sources = LoadStreams(options.source, options.vid_stride, options.reconnect_timeout)
    else:
        sources = LoadSources(options.source, options.vid_stride)
    save_dir = increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok)
    run = DetectRun(options, detector, sources, save_dir)
    with stopping_on_sigterm():
        try:
            run.loop()
        except KeyboardInterrupt:
            LOGGER.warning("WARNING: interrupted: finishing the outputs of the %d frames done", run.done)
        finally:
            if live:
                sources.close()
            run.writer.close()
    _report(run, sources, save_dir)
    return list(run.results)


LIVE_RESULTS = 10_000  # frames whose results a live run keeps for run()'s return value


class DetectRun:
    """One detect.py run's loop: batches of frames in, detections (and tracks) to the writer and log."""

    def __init__(self, options: DetectOptions, detector: Detector, sources, save_dir: Path) -> None:
        self.options, self.detector, self.sources = options, detector, sources
        self.live = isinstance(sources, LoadStreams)
        streams = list(zip(sources.sources, sources.names)) if self.live else ()
        files = [] if self.live else sources.files
        self.writer = DetectionWriter(save_dir, files, detector.names, options.outputs(), streams,
                                      Path(str(options.source).rstrip("/")).stem or "images")  # fmt: skip
        self.results = collections.deque(maxlen=LIVE_RESULTS if self.live else None)
        self.totals, self.failed, self.done = np.zeros(3), [], 0
        self.img_hw = detector.input_hw()

    def batches(self) -> Iterator[list[SourceItem]]:
        """Lists of frames to run as one batch: the newest of each stream, or one image or frame a time."""
        if self.live:
            yield from self.sources
        else:
            yield from ([item] for item in self.sources)

    def loop(self) -> None:
        self.detector.warmup()
        for batch in self.batches():
            try:  # a batch that fails never stops the run
                found, detections = self.detect(batch)
            except Exception as error:
                self.skip(batch, error)
                continue
            self.totals += np.array(found.t) * len(batch)
            for item, boxes, input_hw in zip(batch, detections, found.input_hw):
                try:
                    showing = self.record(item, boxes, input_hw, found.t[1])
                except Exception as error:
                    self.skip([item], error)
                    continue
                if not showing:
                    raise KeyboardInterrupt  # q in a --view-img window

    def skip(self, items: list[SourceItem], error: Exception) -> None:
        named = ", ".join(sorted({item.path for item in items}))
        LOGGER.debug("detecting on %s failed", named, exc_info=True)
        LOGGER.warning("WARNING: skipping %s: it failed with %s: %s", named, type(error).__name__, error)
        self.failed.extend(item.path for item in items)

    def detect(self, batch: list[SourceItem]):
        """One batch through the detector (and each stream's tracker). -> (the Detections, per item boxes)."""
        detector = self.detector
        if not self.options.track:
            found = detector([item.image for item in batch], channels="bgr")  # OpenCV decoded them
            return found, found.xyxy
        images, times = [item.image for item in batch], [item.timestamp for item in batch]
        streams = [item.path if item.is_video else "images" for item in batch]  # images: one sequence
        rates = [item.fps or 30.0 for item in batch]
        return detector.track_batch(images, streams, times, rates, channels="bgr")

    def record(self, item: SourceItem, boxes, input_hw, inference_ms: float) -> bool:
        """Write and log one frame's results. -> False when a --view-img window asked to stop."""
        showing = self.writer.write(item, boxes)
        self.done += 1
        detections = boxes.numpy().astype(np.float64)
        self.results.append(
            {"path": item.path, "frame": item.frame, "shape": item.image.shape[:2], "detections": detections}
        )
        shape = "x".join(map(str, input_hw))
        description = describe(detections, self.detector.names)
        LOGGER.info("%s %s: %s %s, %.1fms", where(item), item.path, shape, description, inference_ms)
        return showing


@contextmanager
def stopping_on_sigterm():
    """Within: SIGTERM ends the run as Ctrl-C does, finishing its outputs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def where(item: SourceItem) -> str:
    """'image 2/5', 'video 1/1 (frame 3/90)' or 'stream 2/2 (frame 311)' for the log line."""
    if item.stream is not None:
        return f"stream {item.index}/{item.count} (frame {item.frame})"
    if item.is_video:
        return f"video {item.index}/{item.count} (frame {item.frame}/{item.frames})"
    return f"image {item.index}/{item.count}"


def _report(run: DetectRun, sources, save_dir: Path) -> None:
    """The closing lines; raises DataError when nothing at all could be processed."""
    if not run.done:
        raise DataError(
            f"none of the {len(sources)} file(s) or stream(s) of {sources.source} could be read or processed "
            "(see the warnings above); pass images, videos or streams OpenCV can decode."
        )
    pre, inference, nms = run.totals / run.done
    LOGGER.info(
        "Speed: %.1f ms pre-process, %.1f ms inference, %.1f ms NMS per image at shape (1, 3, %d, %d)",
        pre, inference, nms, *run.img_hw,
    )  # fmt: skip
    if run.live:
        for name, (kept, dropped) in sources.counts.items():
            LOGGER.info("%s: %d frames read, %d dropped behind newer ones", name, kept, dropped)
    skipped = sorted(set(getattr(sources, "skipped", []) + run.failed))
    if skipped:
        named = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        LOGGER.warning("WARNING: %d file(s) skipped (see the warnings above): %s", len(skipped), named)
    if run.options.save_txt:
        LOGGER.info("%d label files saved to %s", run.writer.label_files, save_dir / "labels")
    LOGGER.info("Results saved to %s", save_dir)


def main(argv: list[str] | None = None) -> None:
    status, _ = script_main("detect.py", run, parse_args(argv))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
