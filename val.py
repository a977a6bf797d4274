"""Validate a detector: COCO-protocol mAP, P/R, speed, plots, optional COCO JSON and YOLO txt output.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/coco.yaml --img 640
    python val.py --weights model.onnx --task speed

Python: ``val.run(weights=..., data=...)`` returns the dict written to metrics.json. The measurement
itself is ``utils.evaluation.evaluate``, which training calls too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from utils.coco import coco_category_ids, coco_records, evaluate_coco_json, find_annotation_json, image_id_for
from utils.data.config import bundled_defaults, load_data_config
from utils.data.labels import write_yolo_labels
from utils.data.preprocess import check_img_size
from utils.deploy.backend import InferenceModel, load_inference_model
from utils.deploy.validation import validation_loader
from utils.errors import USER_ERRORS, ConfigError, DataError
from utils.evaluation.evaluate import evaluate
from utils.log import setup_logging
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)


def default_img_size(
    img_size: int | None, data_given: bool, data_config: dict, fixed_input_hw: tuple[int, int] | None = None
) -> int:
    """--img when given; else a static ONNX model's input size; else a bundled dataset's own size (see
    utils.data.config.bundled_defaults); else 640."""
    if img_size is not None:
        return int(img_size)
    if fixed_input_hw is not None:
        return int(max(fixed_input_hw))
    return int(bundled_defaults(data_config, named=data_given).get("img_size", 640))


def run(
    data: str | Path | None = None,
    weights: str | Path = "",
    img_size: int | None = None,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    task: str = "val",
    device: str = "",
    half: bool = False,
    workers: int = 2,
    save_json: bool = False,
    save_txt: bool = False,
    verbose: bool = False,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    plots: bool = True,
    model: InferenceModel | None = None,
    save_dir: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Validate the model in ``weights`` (.pt either form, or .onnx), or an already loaded ``model``, on
    the ``task`` split of ``data`` (None: the bundled dataset). Writes metrics.json, the plots and the
    optional txt/JSON outputs to ``save_dir`` (default: a new run folder project/name{N}); returns the
    metrics.json content (plus "coco_eval" when pycocotools ran)."""
    if task not in ("val", "test", "speed"):
        raise ConfigError(f"task must be val, test or speed, not {task!r}.")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1.")
    if img_size is not None and (not isinstance(img_size, int) or img_size < 1):
        raise ConfigError(f"image size {img_size} is not usable; give a positive whole number such as 640.")
    speed_only = task == "speed"
    if speed_only:  # yolov5's speed protocol: batch 1 at the deployment thresholds
        batch_size, conf_thres, iou_thres, save_json, plots = 1, 0.25, 0.45, False, False
    predictor = model if model is not None else load_inference_model(weights, device, half=half)
    data_config = load_data_config(data)
    if data_config["nc"] != predictor.nc:
        raise DataError(
            f"{weights or 'the model'} predicts {predictor.nc} classes but {data_config['yaml_file']} has "
            f"nc={data_config['nc']}; validate on the dataset the model was trained on."
        )
    img_size = default_img_size(img_size, data is not None, data_config, predictor.fixed_input_hw)
    img_size = check_img_size(img_size, predictor.stride)
    loader = validation_loader(data_config, task, img_size, batch_size, workers, predictor)
    predictor.warmup((img_size, img_size))
    save_dir = Path(save_dir) if save_dir is not None else increment_path(Path(project) / name, exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    outputs = _Outputs(save_dir, save_txt, save_json, coco_category_ids(data_config, predictor.nc))
    names = list(data_config["names"])
    thresholds = dict(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
    result = evaluate(
        predictor, loader, names, **thresholds, speed_only=speed_only, quiet=quiet, on_image=outputs
    )
    if not quiet:
        result.log(verbose)
    results = result.to_dict()
    if save_json:
        coco_stats = outputs.write_json(find_annotation_json(data_config), quiet)
        if coco_stats is not None:
            results["coco_eval"] = coco_stats
    result.save(save_dir, plots, content=results)
    if not quiet:
        LOGGER.info("Results saved to %s", save_dir)
    return results


class _Outputs:
    """Per-image predictions as YOLO txt files (labels/) and COCO JSON records (predictions.json)."""

    def __init__(self, save_dir: Path, save_txt: bool, save_json: bool, category_ids: list[int]) -> None:
        self.save_dir, self.category_ids = save_dir, category_ids
        self.labels_dir = save_dir / "labels" if save_txt else None
        if self.labels_dir is not None:
            self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] | None = [] if save_json else None
        self.image_ids: list = []

    def __call__(self, det: torch.Tensor, path: str, original_hw: tuple[int, int]) -> None:
        if self.labels_dir is not None:
            write_yolo_labels(self.labels_dir / f"{Path(path).stem}.txt", det, original_hw, save_conf=True)
        if self.records is not None:
            self.records += coco_records(det, path, self.category_ids)
            self.image_ids.append(image_id_for(path))

    def write_json(self, annotation_json: Path | None, quiet: bool) -> dict | None:
        """Write predictions.json; with the dataset's annotation JSON, pycocotools' stats."""
        json_file = self.save_dir / "predictions.json"
        json_file.write_text(json.dumps(self.records))
        LOGGER.info("Saved %d COCO-format detections to %s", len(self.records), json_file)
        if annotation_json is None:
            return None
        return evaluate_coco_json(annotation_json, json_file, self.image_ids, quiet)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        required=True,
        help="checkpoint .pt (ours, either form, or yolov5's), .onnx or OpenVINO IR",
    )
    parser.add_argument("--data", default=None, help="dataset YAML (default: the bundled synthetic dataset)")
    img_help = "inference size in pixels (default 640, or the bundled dataset's size without --data)"
    parser.add_argument("--img", "--img-size", dest="img_size", type=int, default=None, help=img_help)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--conf-thres", type=float, default=0.001)
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", choices=("val", "test", "speed"))
    parser.add_argument("--device", default="", help="cpu, 0, 0,1 ... (default: GPU 0 when available)")
    parser.add_argument(
        "--half",
        action="store_true",
        help="half-precision inference: float16 on CUDA, bfloat16 on a CPU that computes it natively",
    )
    parser.add_argument("--workers", type=int, default=2, help="dataloader worker processes")
    parser.add_argument("--save-json", action="store_true", help="write COCO-format predictions.json")
    parser.add_argument("--save-txt", action="store_true", help="write YOLO-format predictions to labels/")
    parser.add_argument("--verbose", action="store_true", help="print mAP per class")
    parser.add_argument("--project", default="runs/val")
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args = parse_args(argv)
    try:
        return run(**vars(args))
    except USER_ERRORS as error:
        LOGGER.error(f"val.py: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
