"""Validate a detector: COCO-protocol mAP, P/R, speed, plots, optional COCO JSON and YOLO txt output.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/coco.yaml --img 640
    python val.py --weights model.onnx --task speed

Python: ``val.run(weights=..., data=...)`` or, during training, ``val.run(model=ema_model,
dataloader=val_loader, plots=False)``; both return the dict written to metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from utils.augment import check_img_size
from utils.backend import InferenceModel, TorchInferenceModel, load_inference_model
from utils.boxes import box_normxywh_to_xyxy, box_xyxy_to_normxywh, scale_boxes_to_original
from utils.coco import (
    coco_category_ids,
    coco_records,
    evaluate_coco_json,
    find_annotation_json,
    image_id_for,
)
from utils.curves import plot_validation
from utils.device import select_device, time_sync
from utils.log import setup_logging
from utils.metrics import ConfusionMatrix, DetectionEvaluator, DetectionMetrics
from utils.nms import non_max_suppression
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)
TABLE_HEADER = ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")


def default_img_size(
    img_size: int | None, data_given: bool, data_config: dict, fixed_input_hw: tuple[int, int] | None = None
) -> int:
    """--img when given; else a static ONNX model's input size; else the bundled dataset's own size when
    --data was not given; else 640."""
    if img_size:
        return int(img_size)
    if fixed_input_hw is not None:
        return int(max(fixed_input_hw))
    if not data_given:
        return int(data_config.get("defaults", {}).get("img_size", 640))
    return 640


def load_model(weights: str | Path, device: str | torch.device) -> InferenceModel:
    """The single place where val.py turns a weights file (.pt either form, or .onnx) into a model."""
    return load_inference_model(weights, device)


def _wrap_model(model: Any) -> tuple[InferenceModel, bool]:
    """A model passed in directly (training's EMA model or an InferenceModel) -> (predictor, was_training)."""
    if isinstance(model, InferenceModel):
        return model, False
    model = getattr(model, "ema", model)  # a ModelEMA holds the averaged model in .ema
    model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrapper
    was_training = model.training
    model.eval()
    return TorchInferenceModel(model, next(model.parameters()).device), was_training


class _Timer:
    """Accumulated seconds of the pre-process, inference and NMS stages."""

    def __init__(self) -> None:
        self.seconds = np.zeros(3)
        self.images = 0
        self.max_shape = (0, 3, 0, 0)

    def per_image_ms(self) -> dict[str, float]:
        values = self.seconds * 1e3 / max(self.images, 1)
        return dict(zip(("preprocess", "inference", "nms"), (float(v) for v in values)))


def _evaluate(
    predictor: InferenceModel,
    dataloader,
    nc: int,
    settings: dict,
    outputs: dict,
    quiet: bool,
) -> tuple[DetectionEvaluator, ConfusionMatrix, _Timer]:
    """Run the model over the loader and collect matches, confusion counts, timings and outputs."""
    evaluator = DetectionEvaluator(nc)
    confusion = ConfusionMatrix(nc)
    timer = _Timer()
    description = ("%22s" + "%11s" * 6) % TABLE_HEADER
    for images, targets, paths, shapes in tqdm(dataloader, desc=description, disable=quiet, leave=False):
        start = time_sync()
        inputs = images.to(predictor.device, non_blocking=True).float() / 255  # (B, 3, H, W) 0..1
        loaded = time_sync()
        prediction = predictor(inputs)  # (B, N, 5 + nc)
        inferred = time_sync()
        detections = non_max_suppression(
            prediction,
            settings["conf_thres"],
            settings["iou_thres"],
            multi_label=True,
            max_det=settings["max_det"],
        )
        timer.seconds += (loaded - start, inferred - loaded, time_sync() - inferred)
        timer.images += len(images)
        timer.max_shape = max(timer.max_shape, tuple(inputs.shape), key=lambda s: s[2] * s[3])
        if settings["task"] == "speed":
            continue
        height, width = inputs.shape[2:]
        for index, (det, path, (original_hw, ratio_pad)) in enumerate(zip(detections, paths, shapes)):
            labels = targets[targets[:, 0] == index, 1:].clone()  # (m, 5) class, cx, cy, w, h normalized
            label_boxes = box_normxywh_to_xyxy(labels[:, 1:], width, height)
            labels[:, 1:] = scale_boxes_to_original(label_boxes, original_hw, ratio_pad)
            det = det.detach().cpu().clone()  # (n, 6) xyxy, score, class
            scale_boxes_to_original(det[:, :4], original_hw, ratio_pad)
            evaluator.add_image(det, labels, image_id_for(path))
            confusion.update(det, labels)
            _save_outputs(det, path, original_hw, outputs)
    return evaluator, confusion, timer


def _save_outputs(det: torch.Tensor, path: str, original_hw: tuple[int, int], outputs: dict) -> None:
    """YOLO txt lines (class cx cy w h conf, normalized) and/or COCO JSON records for one image."""
    if outputs.get("labels_dir") is not None:
        xywh = box_xyxy_to_normxywh(det[:, :4], original_hw[1], original_hw[0])
        lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f} {s:.5f}\n" for (x, y, w, h), s, c in
                 zip(xywh.tolist(), det[:, 4].tolist(), det[:, 5].tolist())]  # fmt: skip
        (outputs["labels_dir"] / f"{Path(path).stem}.txt").write_text("".join(lines))
    if outputs.get("json_records") is not None:
        outputs["json_records"] += coco_records(det, path, outputs["category_ids"])
        outputs["image_ids"].append(image_id_for(path))


def format_table(metrics: DetectionMetrics, names: list[str], verbose: bool) -> str:
    """yolov5's table: an 'all' row, then one row per class with labels when verbose."""
    row = "%22s%11i%11i%11.3g%11.3g%11.3g%11.3g"
    lines = [("%22s" + "%11s" * 6) % TABLE_HEADER]
    all_row = ("all", metrics.images, metrics.instances.sum(), metrics.mean_precision, metrics.mean_recall)
    lines.append(row % (*all_row, metrics.map50, metrics.map50_95))
    if metrics.instances.sum() == 0:
        lines.append("WARNING: no labels in this split, so there is nothing to measure mAP against.")
    if verbose and len(names) > 1:
        for c in np.nonzero(metrics.has_gt)[0]:
            class_row = (names[c], metrics.images_with_class[c], metrics.instances[c])
            lines.append(
                row
                % (*class_row, metrics.precision[c], metrics.recall[c], metrics.ap50[c], metrics.ap50_95[c])
            )
    return "\n".join(lines)


def results_dict(metrics: DetectionMetrics | None, names: list[str], timer: _Timer) -> dict[str, Any]:
    """The metrics.json content (plain JSON types). metrics None (speed task) leaves the scores None."""
    speed = timer.per_image_ms()
    results: dict[str, Any] = {"mAP50": None, "mAP50_95": None, "precision": None, "recall": None,
                               "fitness": None, "per_class": {}}  # fmt: skip
    if metrics is not None:
        results.update(
            mAP50=metrics.map50,
            mAP50_95=metrics.map50_95,
            precision=metrics.mean_precision,
            recall=metrics.mean_recall,
            fitness=metrics.fitness,
        )
        for c, name in enumerate(names):
            has_gt = bool(metrics.has_gt[c])
            results["per_class"][name] = {
                "AP50": float(metrics.ap50[c]) if has_gt else None,
                "AP50_95": float(metrics.ap50_95[c]) if has_gt else None,
                "precision": float(metrics.precision[c]) if has_gt else None,
                "recall": float(metrics.recall[c]) if has_gt else None,
                "instances": int(metrics.instances[c]),
                "images": int(metrics.images_with_class[c]),
            }
    results.update(speed_ms=speed, images=timer.images, input_shape=list(timer.max_shape))
    return results


def _build_loader(
    data_config: dict, task: str, img_size: int, batch_size: int, workers: int, predictor: InferenceModel
):
    """yolov5's validation loader: rect batches padded by half a stride, except for the speed task and
    fixed-size ONNX graphs, which get plain square letterboxes."""
    split = "val" if task == "speed" else task
    sources = data_config.get(split)
    if not sources:
        raise SystemExit(
            f"{data_config['yaml_file']} has no '{split}' split; add a '{split}:' entry or use --task val."
        )
    from utils.dataset import create_dataloader

    rect = task != "speed" and predictor.fixed_input_hw is None
    loader, _ = create_dataloader(
        sources, img_size, batch_size, stride=predictor.stride, rect=rect, pad=0.5 if rect else 0.0,
        workers=workers, prefix=f"{split}: ", nc=predictor.nc,
    )  # fmt: skip
    return loader


def _data_config(data: str | Path | dict | None, needed: bool) -> dict | None:
    """The loaded data config: data as given when already a dict; loaded from the YAML (None: the
    bundled dataset) when data is given or the loader or COCO JSON needs it; else None."""
    if isinstance(data, dict):
        return data
    if data is None and not needed:
        return None
    from utils.dataset import load_data_config

    return load_data_config(data)


def run(
    data: str | Path | dict | None = None,
    weights: str | Path | None = None,
    img_size: int | None = None,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    task: str = "val",
    device: str = "",
    workers: int = 2,
    save_json: bool = False,
    save_txt: bool = False,
    verbose: bool = False,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    plots: bool = True,
    model: Any = None,
    dataloader: Any = None,
    names: list[str] | None = None,
    save_dir: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Validate ``model`` (or the model in ``weights``) and return the metrics dict (see results_dict).

    With ``model`` given (training), files are written only if ``save_dir`` is given; otherwise a new
    run folder project/name{N} holds metrics.json, the plots and the optional txt/JSON outputs.
    """
    if task not in ("val", "test", "speed"):
        raise ValueError(f"task must be val, test or speed, not {task!r}.")
    if task == "speed":  # yolov5's speed protocol: batch 1 at the deployment thresholds
        batch_size, conf_thres, iou_thres, save_json, plots = 1, 0.25, 0.45, False, False
    training = model is not None
    if model is None:
        if weights is None:
            raise ValueError("pass weights (a .pt or .onnx file) or a model to validate.")
        model = load_model(weights, select_device(device))
    predictor, was_training = _wrap_model(model)
    data_config = _data_config(data, needed=dataloader is None or save_json)
    if data_config is not None and data_config["nc"] != predictor.nc:
        raise SystemExit(
            f"{weights or 'the model'} predicts {predictor.nc} classes but {data_config['yaml_file']} has "
            f"nc={data_config['nc']}; pass the --data the model was trained on."
        )
    names = list(names or (data_config or {}).get("names") or predictor.names)
    if dataloader is None:
        img_size = default_img_size(img_size, data is not None, data_config, predictor.fixed_input_hw)
        img_size = check_img_size(img_size, predictor.stride)
        dataloader = _build_loader(data_config, task, img_size, batch_size, workers, predictor)
    if not training:
        predictor.warmup((img_size, img_size) if img_size else (640, 640))
    if save_dir is not None or not training:
        save_dir = increment_path(save_dir or Path(project) / name, exist_ok=exist_ok or save_dir is not None)
    outputs = _output_targets(save_dir, save_txt, save_json, data_config, predictor.nc)
    settings = {"conf_thres": conf_thres, "iou_thres": iou_thres, "max_det": max_det, "task": task}
    try:
        evaluator, confusion, timer = _evaluate(predictor, dataloader, predictor.nc, settings, outputs, quiet)
    finally:
        if was_training:
            model.train()
    metrics = evaluator.compute() if task != "speed" else None
    results = results_dict(metrics, names, timer)
    _report(metrics, names, timer, verbose, quiet)
    if save_dir is not None:
        _write_files(results, metrics, confusion, names, save_dir, outputs, data_config, plots, quiet)
    return results


def _output_targets(
    save_dir: Path | None, save_txt: bool, save_json: bool, data_config: dict | None, nc: int
) -> dict:
    outputs: dict[str, Any] = {"labels_dir": None, "json_records": None}
    if save_dir is None:
        return outputs
    if save_txt:
        outputs["labels_dir"] = save_dir / "labels"
        outputs["labels_dir"].mkdir(parents=True, exist_ok=True)
    if save_json:
        outputs["json_records"], outputs["image_ids"] = [], []
        outputs["category_ids"] = coco_category_ids(data_config or {}, nc)
    return outputs


def _report(
    metrics: DetectionMetrics | None, names: list[str], timer: _Timer, verbose: bool, quiet: bool
) -> None:
    if quiet:
        return
    if metrics is not None:
        LOGGER.info(format_table(metrics, names, verbose))
    speed = timer.per_image_ms()
    LOGGER.info(
        "Speed: %.1f ms pre-process, %.1f ms inference, %.1f ms NMS per image at shape %s",
        speed["preprocess"], speed["inference"], speed["nms"], tuple(timer.max_shape),
    )  # fmt: skip


def _write_files(
    results, metrics, confusion, names, save_dir: Path, outputs, data_config, plots, quiet
) -> None:
    if outputs["json_records"] is not None:
        json_file = save_dir / "predictions.json"
        json_file.write_text(json.dumps(outputs["json_records"]))
        LOGGER.info("Saved %d COCO-format detections to %s", len(outputs["json_records"]), json_file)
        annotation_json = find_annotation_json(data_config or {})
        if annotation_json is not None:
            coco_stats = evaluate_coco_json(annotation_json, json_file, outputs["image_ids"], quiet)
            if coco_stats is not None:
                results["coco_eval"] = coco_stats
    if plots and metrics is not None:
        plot_validation(metrics, confusion, names, save_dir)
    (save_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    if not quiet:
        LOGGER.info("Results saved to %s", save_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint .pt (training or fused form) or .onnx")
    parser.add_argument("--data", default=None, help="dataset YAML (default: the bundled synthetic dataset)")
    img_help = "inference size in pixels (default 640, or the bundled dataset's size without --data)"
    parser.add_argument("--img", "--img-size", dest="img_size", type=int, default=None, help=img_help)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--conf-thres", type=float, default=0.001)
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", choices=("val", "test", "speed"))
    parser.add_argument("--device", default="", help="cpu, 0, 0,1 ... (default: GPU 0 when available)")
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
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"val.py: {error}") from None


if __name__ == "__main__":
    main()
