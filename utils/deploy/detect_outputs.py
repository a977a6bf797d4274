"""detect.py's outputs under its run folder: annotated images and videos, YOLO label files (labels/), box
crops (crops/<class>/), and with tracking one MOTChallenge file per video or stream (tracks/); the
--view-img windows; and the drawing and crops that the Detector's results (utils.deploy.detections) share.

Each source file's outputs sit at its path relative to the deepest folder holding all source files, so
same-named images from different folders (a/im0.jpg, b/im0.jpg) keep apart; no output may replace a
source file. A stream's outputs are named as yolov5 names them (utils.data.sources.stream_names): the
annotated video <name>.mp4, labels/<name>_<frame>.txt, crops/<class>/<name>_<frame>_<i>.jpg.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

import cv2
import numpy as np
import torch

from utils.data.labels import mot_rows, write_yolo_labels
from utils.data.sources import SourceItem, is_video, relative_output_paths
from utils.errors import ConfigError
from utils.evaluation.plots import as_numpy, box_labels, colors, draw_boxes, draw_labeled_boxes

LOGGER = logging.getLogger(__name__)


def annotate(
    image: np.ndarray,
    detections: np.ndarray | torch.Tensor,
    names: list[str],
    line_thickness: int | None = None,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """A copy of the BGR image with detections (n, 6) x1, y1, x2, y2, score, class drawn on it, lines and
    labels sized in proportion to the image unless line_thickness (pixels) is given. Tracked detections
    (n, 7), the track ID last, lead each label with their ID ("#3 circle 0.91") and are drawn in a color
    per ID, so that an object keeps its color."""
    if detections.shape[1] < 7:
        return draw_boxes(image.copy(), detections[:, :4], detections[:, 5], detections[:, 4], names,
                          line_thickness, hide_labels, hide_conf)  # fmt: skip
    ids = as_numpy(detections[:, 6], int).tolist()
    labels = None
    if not hide_labels:
        labels = [
            f"#{i} {text}"
            for i, text in zip(ids, box_labels(detections[:, 5], detections[:, 4], names, hide_conf))
        ]
    return draw_labeled_boxes(
        image.copy(), detections[:, :4], [colors(i) for i in ids], labels, line_thickness
    )


def crop_box(image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
    """The pixels of image inside one box (x1, y1, x2, y2), outward-rounded; may be empty."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return image[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]


def save_crops(
    image: np.ndarray, detections: np.ndarray | torch.Tensor, names: list[str], crop_dir: Path, name: Path
) -> list[Path]:
    """Write each box's crop as crop_dir/<class name>/<name's folders>/<name>_<i>.jpg; returns the files."""
    written = []
    for i, row in enumerate(np.asarray(detections).tolist()):
        crop = crop_box(image, row[:4])
        if crop.size:
            path = crop_dir / names[int(row[5])] / name.parent / f"{name.name}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), crop)
            written.append(path)
    return written


def check_outputs_apart(outputs: Sequence[Path], inputs: Sequence[str | Path]) -> None:
    """Raises ConfigError when an output file would replace an input file."""
    sources = {Path(p).resolve() for p in inputs}
    for output in outputs:
        if Path(output).resolve() in sources:
            raise ConfigError(
                f"writing {output} would replace the source image of the same path; write the results "
                "to a folder that holds no source files."
            )


def has_display() -> bool:
    """Whether a window can open: always on macOS and Windows, elsewhere (X11, Wayland) when the session
    names a display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class OutputOptions:
    """What detect.py writes besides the log: see its flags of the same names."""

    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    nosave: bool = False
    line_thickness: int | None = None  # None: in proportion to each image
    hide_labels: bool = False
    hide_conf: bool = False
    view_img: bool = False


class DetectionWriter:
    """Writes one image's or frame's detections at a time; ``close()`` finishes the videos and track files.

    files: the source's files; streams: (source, output name) of each live stream instead; sequence: the
    track file's name when tracking runs over images (they are one sequence, frames in source order)."""

    def __init__(self, save_dir: Path, files: list[Path], names: list[str], options: OutputOptions,
                 streams: Sequence[tuple[str, str]] = (), sequence: str = "images") -> None:  # fmt: skip
        self.save_dir, self.names, self.options, self.sequence = Path(save_dir), names, options, sequence
        # source path -> its relative path without suffix, e.g. "a/im0"; a stream -> its name
        self.relative = {str(f): r.with_suffix("") for f, r in zip(files, relative_output_paths(files))}
        self.relative.update((source, Path(name)) for source, name in streams)
        self.streams = {source for source, _ in streams}
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.track_files: dict[str, IO] = {}
        self.label_files = 0
        self.viewer = Viewer() if options.view_img else None
        self._check_apart(files)

    def media_path(self, path: str | Path) -> Path:
        """Where the annotated image, or the annotated video (.mp4), of a source file or stream goes."""
        name = self.relative[str(path)]
        video = is_video(path) or str(path) in self.streams
        return self.save_dir / (name.parent / (name.name + (".mp4" if video else Path(path).suffix)))

    def track_path(self, item: SourceItem) -> Path:
        """The MOTChallenge file of the video or stream an item belongs to (all images: ``sequence``)."""
        name = self.relative[item.path] if item.is_video else Path(self.sequence)
        return self.save_dir / "tracks" / name.parent / f"{name.name}.txt"

    def _label_path(self, item: SourceItem) -> Path:
        name = self.relative[item.path]
        return (
            self.save_dir
            / "labels"
            / name.parent
            / f"{name.name}{f'_{item.frame}' if item.is_video else ''}.txt"
        )

    def _check_apart(self, files: list[Path]) -> None:
        """Raises ConfigError when an output would replace a source file."""
        outputs = [] if self.options.nosave else [self.media_path(f) for f in files]
        check_outputs_apart(outputs, files)
        for folder in (self.save_dir / "labels", self.save_dir / "crops"):
            inside = [f for f in files if folder.resolve() in Path(f).resolve().parents]
            if inside:
                raise ConfigError(
                    f"source file {inside[0]} lies in the output folder {folder}, where it could be "
                    "replaced; write the results to a folder that holds no source files."
                )

    def write(self, item: SourceItem, detections: torch.Tensor) -> bool:
        """detections: Tensor[n, 6] x1, y1, x2, y2 (pixels of item.image), score, class; with tracking
        Tensor[n, 7], the track ID last. -> False once the user closed the run from a --view-img window."""
        options = self.options
        if options.save_txt and len(detections):
            label_file = self._label_path(item)
            label_file.parent.mkdir(parents=True, exist_ok=True)
            write_yolo_labels(label_file, detections, item.image.shape[:2], options.save_conf)
            self.label_files += 1
        if detections.shape[1] > 6:
            self._write_tracks(item, detections)
        if options.save_crop:
            name = self.relative[item.path]
            name = name.with_name(f"{name.name}_{item.frame}") if item.is_video else name
            save_crops(item.image, detections, self.names, self.save_dir / "crops", name)
        if options.nosave and self.viewer is None:
            return True
        annotated = annotate(
            item.image, detections, self.names, options.line_thickness, options.hide_labels, options.hide_conf
        )
        if not options.nosave:
            self._write_media(item, annotated)
        return self.viewer is None or self.viewer.show(self.relative[item.path].name, annotated)

    def _write_media(self, item: SourceItem, annotated) -> None:
        path = self.media_path(item.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not item.is_video:
            cv2.imwrite(str(path), annotated)
            return
        if item.path not in self.writers:
            height, width = annotated.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writers[item.path] = cv2.VideoWriter(str(path), fourcc, item.fps, (width, height))
        self.writers[item.path].write(annotated)

    def _write_tracks(self, item: SourceItem, detections: torch.Tensor) -> None:
        """Append MOTChallenge rows: frame, ID, left, top, width, height, score, -1, -1, -1."""
        key = item.path if item.is_video else self.sequence
        if key not in self.track_files:
            path = self.track_path(item)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.track_files[key] = open(path, "w")
        rows = detections.double().numpy()
        frame = item.frame if item.is_video else item.index
        table = [[frame, r[6], r[0], r[1], r[2] - r[0], r[3] - r[1], r[4], -1, -1, -1] for r in rows.tolist()]
        self.track_files[key].write(mot_rows(np.array(table).reshape(-1, 10)))

    def close(self) -> None:
        """Finish every video (so that it plays) and track file, and close the --view-img windows."""
        for writer in self.writers.values():
            writer.release()
        for file in self.track_files.values():
            file.close()
        if self.viewer is not None:
            self.viewer.close()


class Viewer:
    """--view-img: each source's annotated frames in a window of its own, where a window can open; else one
    warning, and the run goes on without. The q key ends the run as Ctrl-C does."""

    def __init__(self) -> None:
        self.usable: bool | None = None  # None: not tried yet
        self.windows: set[str] = set()

    def show(self, name: str, image) -> bool:
        """Show an image in the window ``name``; -> False when q was pressed."""
        if self.usable is None:
            self.usable = self._check()
        if not self.usable:
            return True
        if name not in self.windows:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.resizeWindow(name, image.shape[1], image.shape[0])
            self.windows.add(name)
        cv2.imshow(name, image)
        return cv2.waitKey(1) & 0xFF != ord("q")

    @staticmethod
    def _check() -> bool:
        if not has_display():
            LOGGER.warning(
                "WARNING: --view-img: no display here (DISPLAY and WAYLAND_DISPLAY are unset), so no window "
                "opens; the annotated frames are in the run folder."
            )
            return False
        try:
            cv2.namedWindow("RepYOLO", cv2.WINDOW_NORMAL)
            cv2.destroyWindow("RepYOLO")
        except cv2.error:
            LOGGER.warning(
                "WARNING: --view-img: this OpenCV has no windows (opencv-python-headless); pip install "
                "opencv-python to see them. The annotated frames are in the run folder."
            )
            return False
        return True

    def close(self) -> None:
        if self.windows:
            cv2.destroyAllWindows()
