"""Run a detector on images, folders, globs, .txt lists of paths, or videos.

    python detect.py --weights best_fused.pt --source data/images/
    python detect.py --weights best_fused.onnx --source "clips/*.mp4" --conf-thres 0.4

Weights may be a training-form or fused .pt checkpoint (ours or yolov5's), an .onnx export (onnxruntime)
or an OpenVINO IR (its folder or .xml).
Annotated images (and videos) go to runs/detect/exp; --save-txt adds YOLO label files
(class cx cy w h [conf], normalized to the original image) in labels/. Sources from several folders
keep their folders below the common one, so same-named files stay apart. A file that cannot be read or
processed is named in a warning and the others are still processed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from utils.cli import (
    DNN_REFUSED,
    augment_option,
    build_parser,
    device_option,
    exist_ok_option,
    half_option,
    name_option,
    option,
    project_option,
    script_main,
)
from utils.data.sources import LoadSources, SourceItem
from utils.deploy.detections import describe
from utils.deploy.detector import Detector
from utils.deploy.writer import DetectionWriter, OutputOptions
from utils.errors import DataError
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)


@dataclass
class DetectOptions:
    """What detect.py's flags set (utils.cli.option); yolov5's flags it refuses in one sentence or accepts
    and drops (utils.cli.build_parser)."""

    REFUSED: ClassVar[dict[str, str]] = {
        "--view-img": "is not implemented yet; the annotated images and videos are in the run folder.",
        "--vid-stride": "is not implemented yet; every frame of a video is read.",
        "--save-csv": "is not implemented yet; --save-txt --save-conf writes each image's boxes and scores.",
        "--save-format": "is not implemented: --save-txt writes YOLO-format rows only; drop it.",
        "--visualize": "(feature-map plots) is not implemented; drop it.",
        "--dnn": DNN_REFUSED,
    }  # fmt: skip
    IGNORED: ClassVar[dict[str, str]] = {
        "--data": "the class names travel with the weights, which is all detect.py would read from it",
        "--update": "a finished run's checkpoints already hold no optimizer state",
    }

    weights: str | Path = option(
        "",
        ".pt checkpoint (ours, either form, or yolov5's), .onnx, OpenVINO IR or "
        "an edge export (.tflite, .pte, ...)",
        required=True,
    )
    source: str | Path = option("data/images", "image, folder, glob, .txt list or video")
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
    augment: bool = augment_option()
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
                             self.hide_labels, self.hide_conf)  # fmt: skip

    def detector(self) -> Detector:
        """A Detector with these weights, device, precision and settings."""
        detector = Detector(self.weights, self.device, half=self.half, augment=self.augment)
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
    original, "detections" np.ndarray (n, 6) x1, y1, x2, y2 (original pixels), score, class.
    ``weights`` and ``source`` (and the other DetectOptions fields as ``values``), or a whole DetectOptions.
    """
    options = weights if isinstance(weights, DetectOptions) else DetectOptions(weights, source, **values)
    detector = options.detector()
    img_hw = detector.input_hw()
    sources = LoadSources(options.source)
    save_dir = increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok)
    writer = DetectionWriter(save_dir, sources.files, detector.names, options.outputs())
    detector.warmup()
    results, totals, failed = [], np.zeros(3), []
    try:
        for item in sources:
            try:  # one image that fails never stops the run
                found = detector(item.image, channels="bgr")  # OpenCV decoded it
                writer.write(item, found.xyxy[0])
            except Exception as error:
                LOGGER.debug("detecting on %s failed", item.path, exc_info=True)
                LOGGER.warning(
                    "WARNING: skipping %s: it failed with %s: %s", item.path, type(error).__name__, error
                )
                failed.append(item.path)
                continue
            totals += found.t
            detections = found.xyxy[0].numpy().astype(np.float64)
            results.append(
                {
                    "path": item.path,
                    "frame": item.frame,
                    "shape": item.image.shape[:2],
                    "detections": detections,
                }
            )
            shape = "x".join(map(str, found.input_hw[0]))
            description = describe(detections, detector.names)
            LOGGER.info("%s %s: %s %s, %.1fms", where(item), item.path, shape, description, found.t[1])
    finally:
        writer.close()
    _report(
        results, totals, img_hw, sources, failed, save_dir, writer.label_files if options.save_txt else None
    )
    return results


def where(item: SourceItem) -> str:
    """'image 2/5' or 'video 1/1 (frame 3/90)' for the log line."""
    if item.is_video:
        return f"video {item.index}/{item.count} (frame {item.frame}/{item.frames})"
    return f"image {item.index}/{item.count}"


def _report(results, totals, img_hw, sources: LoadSources, failed, save_dir: Path, label_files) -> None:
    """The closing lines; raises DataError when nothing at all could be processed."""
    if not results:
        raise DataError(
            f"none of the {len(sources)} file(s) of {sources.source} could be read or processed (see the "
            "warnings above); pass images or videos OpenCV can decode."
        )
    pre, inference, nms = totals / len(results)
    LOGGER.info(
        "Speed: %.1f ms pre-process, %.1f ms inference, %.1f ms NMS per image at shape (1, 3, %d, %d)",
        pre, inference, nms, *img_hw,
    )  # fmt: skip
    skipped = sorted(set(sources.skipped + failed))
    if skipped:
        named = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        LOGGER.warning("WARNING: %d file(s) skipped (see the warnings above): %s", len(skipped), named)
    if label_files is not None:
        LOGGER.info("%d label files saved to %s", label_files, save_dir / "labels")
    LOGGER.info("Results saved to %s", save_dir)


def main(argv: list[str] | None = None) -> None:
    status, _ = script_main("detect.py", run, parse_args(argv))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
