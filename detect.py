"""Run a detector on images, folders, globs, .txt lists of paths, or videos.

    python detect.py --weights best_fused.pt --source data/images/
    python detect.py --weights best_fused.onnx --source "clips/*.mp4" --conf-thres 0.4

Weights may be a training-form or fused .pt checkpoint, or an .onnx export (onnxruntime).
Annotated images (and videos) go to runs/detect/exp; --save-txt adds YOLO label files
(class cx cy w h [conf], normalized to the original image) in labels/. Sources from several folders
keep their folders below the common one, so same-named files stay apart. A file that cannot be read or
processed is named in a warning and the others are still processed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from utils.data.sources import LoadSources, SourceItem
from utils.deploy.detections import describe
from utils.deploy.detector import Detector
from utils.deploy.writer import DetectionWriter, OutputOptions
from utils.errors import USER_ERRORS, DataError
from utils.log import setup_logging
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights",
        required=True,
        help=".pt checkpoint (ours, either form, or yolov5's), .onnx or OpenVINO IR",
    )
    parser.add_argument("--source", default="data/images", help="image, folder, glob, .txt list or video")
    parser.add_argument(
        "--img",
        "--img-size",
        dest="img_size",
        nargs="+",
        type=int,
        default=None,
        help="h [w] (default: the size the model was trained or exported at, else 640)",
    )
    parser.add_argument("--conf-thres", type=float, default=0.25)
    parser.add_argument("--iou-thres", type=float, default=0.45)
    parser.add_argument("--max-det", type=int, default=1000)
    parser.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class indices")
    parser.add_argument("--agnostic-nms", action="store_true", help="suppress across classes")
    parser.add_argument(
        "--device", default="", help="cpu or a CUDA index such as 0 (default: cuda if present)"
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="half-precision inference: float16 on CUDA, bfloat16 on a CPU that computes it natively",
    )
    parser.add_argument("--save-txt", action="store_true", help="write YOLO label files to labels/")
    parser.add_argument("--save-conf", action="store_true", help="add the confidence to --save-txt rows")
    parser.add_argument("--save-crop", action="store_true", help="write each box's crop to crops/<class>/")
    parser.add_argument("--nosave", action="store_true", help="do not write annotated images or videos")
    parser.add_argument("--project", default="runs/detect")
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument("--line-thickness", type=int, default=3)
    parser.add_argument("--hide-labels", action="store_true")
    parser.add_argument("--hide-conf", action="store_true")
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error("--img takes one size or two (height width)")
    return args


def run(
    weights: str | Path,
    source: str | Path = "data/images",
    img_size: int | list[int] | None = None,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 1000,
    classes: list[int] | None = None,
    agnostic_nms: bool = False,
    device: str = "",
    half: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    save_crop: bool = False,
    nosave: bool = False,
    project: str | Path = "runs/detect",
    name: str = "exp",
    exist_ok: bool = False,
    line_thickness: int = 3,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> list[dict]:
    """Detect on every image / frame of ``source`` with ``utils.deploy.detector.Detector``.

    Returns one dict per image or frame: "path", "frame" (None for images), "shape" (h, w) of the
    original, "detections" np.ndarray (n, 6) x1, y1, x2, y2 (original pixels), score, class.
    """
    detector = Detector(weights, device, half=half)
    detector.size, detector.classes, detector.agnostic = img_size, classes, agnostic_nms
    detector.conf, detector.iou, detector.max_det = conf_thres, iou_thres, max_det
    detector.check_classes(classes)
    img_hw = detector.input_hw()
    sources = LoadSources(source)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    options = OutputOptions(save_txt, save_conf, save_crop, nosave, line_thickness, hide_labels, hide_conf)
    writer = DetectionWriter(save_dir, sources.files, detector.names, options)
    detector.warmup()
    results, totals, failed = [], np.zeros(3), []
    try:
        for item in sources:
            try:  # one image that fails never stops the run
                found = detector(item.image)
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
    _report(results, totals, img_hw, sources, failed, save_dir, writer.label_files if save_txt else None)
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
    setup_logging()
    args = parse_args(argv)
    try:
        run(**vars(args))
    except USER_ERRORS as error:
        LOGGER.error(f"detect.py: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
