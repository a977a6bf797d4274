"""Run a detector on images, folders, globs, .txt lists of paths, or videos.

    python detect.py --weights best_fused.pt --source data/images/
    python detect.py --weights best_fused.onnx --source "clips/*.mp4" --conf-thres 0.4

Weights may be a training-form or fused .pt checkpoint, or an .onnx export (onnxruntime).
Annotated images (and videos) go to runs/detect/exp; --save-txt adds YOLO label files
(class cx cy w h [conf], normalized to the original image) in labels/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import scale_boxes_to_original
from utils.data.labels import write_yolo_labels
from utils.data.preprocess import check_img_size, image_to_tensor, letterbox
from utils.data.sources import LoadSources, SourceItem
from utils.deploy.backend import InferenceModel, load_inference_model
from utils.device import time_sync
from utils.errors import USER_ERRORS
from utils.log import setup_logging
from utils.nms import non_max_suppression
from utils.paths import increment_path
from utils.plots import draw_boxes

LOGGER = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help=".pt checkpoint (training form or fused) or .onnx")
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


def input_size(model: InferenceModel, img_size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """(height, width) to letterbox to: a static ONNX graph's size, else img_size rounded up to the stride."""
    sizes = [img_size] * 2 if isinstance(img_size, int) else list(img_size) * (2 if len(img_size) == 1 else 1)
    if model.fixed_input_hw is not None:
        if tuple(sizes) != model.fixed_input_hw:
            LOGGER.info(
                "using the ONNX model's fixed input size %s instead of --img %s", model.fixed_input_hw, sizes
            )
        return model.fixed_input_hw
    height = check_img_size(sizes[0], model.stride)
    return height, height if sizes[1] == sizes[0] else check_img_size(sizes[1], model.stride)


def preprocess(image_bgr: np.ndarray, img_hw: tuple[int, int], stride: int, auto: bool, device: torch.device):
    """BGR (H, W, 3) uint8 -> letterboxed float RGB (1, 3, h, w) in 0..1, and its
    ((ratio_h, ratio_w), (pad_x, pad_y))."""
    image, ratio, pad = letterbox(image_bgr, img_hw, auto=auto, stride=stride)
    return image_to_tensor(image).to(device).float().div(255).unsqueeze(0), (ratio, pad)


def describe(detections: np.ndarray, names: list[str]) -> str:
    """'2 circles, 1 square' (class order), or '(no detections)'."""
    if len(detections) == 0:
        return "(no detections)"
    classes, counts = np.unique(detections[:, 5].astype(int), return_counts=True)
    return ", ".join(f"{n} {plural(names[c], n)}" for c, n in zip(classes.tolist(), counts.tolist()))


def plural(name: str, count: int) -> str:
    """English plural for the detection line: 'circle' -> 'circles', 'cross' -> 'crosses'."""
    if count == 1:
        return name
    return name + ("es" if name.endswith(("s", "x", "z", "ch", "sh")) else "s")


def save_crops(
    image: np.ndarray, detections: np.ndarray, names: list[str], crop_dir: Path, stem: str
) -> None:
    for i, (x1, y1, x2, y2, _, cls) in enumerate(detections):
        crop = image[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
        if crop.size:
            folder = crop_dir / names[int(cls)]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{stem}_{i}.jpg"), crop)


class _Outputs:
    """Annotated images and videos, labels and crops under save_dir."""

    def __init__(self, save_dir: Path, names: list[str], options: dict) -> None:
        self.save_dir, self.names, self.options = save_dir, names, options
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.label_files = 0
        if options["save_txt"]:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)

    def write(self, item: SourceItem, detections: np.ndarray) -> None:
        opts = self.options
        stem = Path(item.path).stem + (f"_{item.frame}" if item.is_video else "")
        if opts["save_txt"] and len(detections):
            label_file = self.save_dir / "labels" / f"{stem}.txt"
            write_yolo_labels(label_file, detections, item.image.shape[:2], opts["save_conf"])
            self.label_files += 1
        if opts["save_crop"]:
            save_crops(item.image, detections, self.names, self.save_dir / "crops", stem)
        if opts["nosave"]:
            return
        annotated = draw_boxes(
            item.image.copy(),
            detections[:, :4],
            detections[:, 5].astype(int),
            scores=detections[:, 4],
            names=self.names,
            line_thickness=opts["line_thickness"],
            hide_labels=opts["hide_labels"],
            hide_conf=opts["hide_conf"],
        )
        if not item.is_video:
            cv2.imwrite(str(self.save_dir / Path(item.path).name), annotated)
            return
        if item.path not in self.writers:
            height, width = annotated.shape[:2]
            out_path = str(self.save_dir / f"{Path(item.path).stem}.mp4")
            self.writers[item.path] = cv2.VideoWriter(
                out_path, cv2.VideoWriter_fourcc(*"mp4v"), item.fps, (width, height)
            )
        self.writers[item.path].write(annotated)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()


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
    """Detect on every image / frame of ``source``.

    Returns one dict per image or frame: "path", "frame" (None for images), "shape" (h, w) of the
    original, "detections" np.ndarray (n, 6) x1, y1, x2, y2 (original pixels), score, class.
    """
    model = load_inference_model(weights, device)
    sources = LoadSources(source)
    img_hw = input_size(model, img_size or model.train_img_size or 640)
    auto = model.fixed_input_hw is None  # minimal padding unless the graph wants one exact size
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    options = dict(save_txt=save_txt, save_conf=save_conf, save_crop=save_crop, nosave=nosave)
    options.update(line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
    outputs = _Outputs(save_dir, model.names, options)
    model.warmup(img_hw)
    results, totals = [], np.zeros(3)
    try:
        for item in sources:
            start = time_sync()
            images, ratio_pad = preprocess(item.image, img_hw, model.stride, auto, model.device)
            loaded = time_sync()
            prediction = model(images)
            inferred = time_sync()
            kept = non_max_suppression(
                prediction, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det
            )[0]
            done = time_sync()
            totals += (loaded - start, inferred - loaded, done - inferred)
            detections = kept.cpu().numpy().astype(np.float64)
            scale_boxes_to_original(detections[:, :4], item.image.shape[:2], ratio_pad)
            outputs.write(item, detections)
            results.append(
                {
                    "path": item.path,
                    "frame": item.frame,
                    "shape": item.image.shape[:2],
                    "detections": detections,
                }
            )
            where = (
                f"video {item.index}/{item.count} (frame {item.frame}/{item.frames})"
                if item.is_video
                else (f"image {item.index}/{item.count}")
            )
            shape = "x".join(str(s) for s in images.shape[2:])
            LOGGER.info(
                "%s %s: %s %s, %.1fms",
                where,
                item.path,
                shape,
                describe(detections, model.names),
                (inferred - loaded) * 1000,
            )
    finally:
        outputs.close()
    if results:
        pre, inference, nms = totals * 1000 / len(results)
        LOGGER.info(
            "Speed: %.1f ms pre-process, %.1f ms inference, %.1f ms NMS per image at shape (1, 3, %d, %d)",
            pre,
            inference,
            nms,
            *img_hw,
        )
    if save_txt:
        LOGGER.info("%d label files saved to %s", outputs.label_files, save_dir / "labels")
    LOGGER.info("Results saved to %s", save_dir)
    return results


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
