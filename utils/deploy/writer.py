"""detect.py's outputs under its run folder: annotated images and videos, YOLO label files (labels/) and
box crops (crops/<class>/).

Each source file's outputs sit at its path relative to the deepest folder holding all source files, so
same-named images from different folders (a/im0.jpg, b/im0.jpg) keep apart; no output may replace a
source file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import torch

from utils.data.labels import write_yolo_labels
from utils.data.sources import SourceItem, is_video, relative_output_paths
from utils.deploy.detections import annotate, check_outputs_apart, save_crops
from utils.errors import ConfigError


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


class DetectionWriter:
    """Writes one image's or frame's detections at a time; ``close()`` finishes the videos."""

    def __init__(self, save_dir: Path, files: list[Path], names: list[str], options: OutputOptions) -> None:
        self.save_dir, self.names, self.options = Path(save_dir), names, options
        # source path -> its relative path without suffix, e.g. "a/im0"
        self.relative = {str(f): r.with_suffix("") for f, r in zip(files, relative_output_paths(files))}
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.label_files = 0
        self._check_apart(files)

    def media_path(self, path: str | Path) -> Path:
        """Where the annotated image, or the annotated video (.mp4), of a source file goes."""
        name = self.relative[str(path)]
        return self.save_dir / (name.parent / (name.name + (".mp4" if is_video(path) else Path(path).suffix)))

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

    def write(self, item: SourceItem, detections: torch.Tensor) -> None:
        """detections: Tensor[n, 6] x1, y1, x2, y2 (pixels of item.image), score, class."""
        options = self.options
        if options.save_txt and len(detections):
            label_file = self._label_path(item)
            label_file.parent.mkdir(parents=True, exist_ok=True)
            write_yolo_labels(label_file, detections, item.image.shape[:2], options.save_conf)
            self.label_files += 1
        if options.save_crop:
            name = self.relative[item.path]
            name = name.with_name(f"{name.name}_{item.frame}") if item.is_video else name
            save_crops(item.image, detections, self.names, self.save_dir / "crops", name)
        if options.nosave:
            return
        annotated = annotate(
            item.image, detections, self.names, options.line_thickness, options.hide_labels, options.hide_conf
        )
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

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
