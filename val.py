"""Validate a detector: COCO-protocol mAP, P/R, speed, plots, optional COCO JSON and YOLO txt output.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/coco.yaml --img 640
    python val.py --weights model.onnx --task speed

Python: ``val.run(weights=..., data=...)`` returns the dict written to metrics.json. The measurement
itself is ``utils.evaluation.evaluate``, which training calls too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from utils.cli import (
    augment_option,
    choice_flags,
    device_option,
    exist_ok_option,
    half_option,
    name_option,
    option,
    parse_options,
    project_option,
    script_main,
)
from utils.coco import coco_category_ids, coco_records, evaluate_coco_json, find_annotation_json, image_id_for
from utils.data.config import bundled_defaults, load_data_config, single_class_config
from utils.data.labels import write_yolo_labels
from utils.data.preprocess import check_img_size
from utils.deploy.backend import load_inference_model
from utils.deploy.formats import loadable, runtime_flags
from utils.deploy.tta import AugmentedInference
from utils.errors import ConfigError, DataError
from utils.evaluation.evaluate import Thresholds, evaluate
from utils.evaluation.loader import validation_loader
from utils.inference import InferenceModel, SingleClassInference
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


@dataclass
class ValOptions:
    """What val.py's flags set (utils.cli.option), and what only Python callers set; yolov5's flags it
    refuses in one sentence (utils.cli.build_parser)."""

    REFUSED: ClassVar[dict[str, str]] = {
        "--save-hybrid": "is refused: yolov5 adds the ground-truth labels to the predictions it scores and "
        "saves, so the mAP it reports is not the model's; use --save-txt --save-conf.",
    }  # fmt: skip

    weights: str | Path = option(
        "", f"a .pt checkpoint (ours, either form, or yolov5's) or an export of convert.py: {loadable()}",
        required=True,
    )  # fmt: skip
    data: str | Path | None = option(None, "dataset YAML (default: the bundled synthetic dataset)")
    img_size: int | None = option(
        None, "inference size in pixels (default 640, or the bundled dataset's size without --data)",
        "--img", "--img-size", "--imgsz", type=int,
    )  # fmt: skip
    batch_size: int = option(32, None)
    conf_thres: float = option(0.001, None)
    iou_thres: float = option(0.6, "NMS IoU threshold")
    max_det: int = option(300, "maximum detections per image")
    task: str = option("val", None, choices=("val", "test", "speed"))
    device: str = device_option(help="cpu, 0, 0,1 ... (default: GPU 0 when available)")
    half: bool = half_option()
    runtime: str | None = choice_flags(runtime_flags())  # a runtime of another format (utils.deploy.formats)
    augment: bool = augment_option()
    single_cls: bool = option(
        False, "score as one class: every label and prediction is class 0, suppressed class-agnostically"
    )
    workers: int = option(2, "dataloader worker processes")
    save_json: bool = option(False, "write COCO-format detections to <weights stem>_predictions.json")
    save_txt: bool = option(False, "write YOLO-format predictions to labels/")
    save_conf: bool = option(False, "with --save-txt, a confidence column after the box (as yolov5)")
    verbose: bool = option(False, "print mAP per class")
    project: str | Path = project_option("runs/val")
    name: str = name_option()
    exist_ok: bool = exist_ok_option()
    plots: bool = True  # PR / F1 curves and the confusion matrix
    save_dir: str | Path | None = None  # default: a new run folder project/name{N}
    quiet: bool = False  # no progress bar and no table

    def check(self) -> ValOptions:
        """One sentence naming the first value that cannot work; the speed task's own settings applied."""
        if self.task not in ("val", "test", "speed"):
            raise ConfigError(f"task must be val, test or speed, not {self.task!r}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size} must be at least 1.")
        if self.img_size is not None and (not isinstance(self.img_size, int) or self.img_size < 1):
            raise ConfigError(
                f"image size {self.img_size} is not usable; give a positive whole number such as 640."
            )
        if self.task != "speed":
            return self
        # yolov5's speed protocol: batch 1 at the deployment thresholds
        speed = dict(batch_size=1, conf_thres=0.25, iou_thres=0.45, save_json=False, plots=False)
        return dataclasses.replace(self, **speed)


def run(options: ValOptions | None = None, model: InferenceModel | None = None, **values) -> dict[str, Any]:
    """Validate the model in ``options.weights`` (a .pt in either form or any export of convert.py), or an
    already loaded ``model``, on the ``task`` split of ``data`` (None: the bundled dataset). ``values``: the
    ValOptions fields, when no ``options`` is given. Writes metrics.json, the plots and the optional
    txt/JSON outputs to ``save_dir``; returns the metrics.json content (plus "coco_eval" when pycocotools
    ran)."""
    options = (options or ValOptions(**values)).check()
    if model is None:
        model = load_inference_model(
            options.weights, options.device, half=options.half, runtime=options.runtime
        )
    if options.augment:
        model = AugmentedInference(model)
    data_config = load_data_config(options.data)
    if options.single_cls:  # yolov5's: labels and predictions all class 0, whatever the model's classes
        data_config = single_class_config(data_config)
        model = SingleClassInference(model, data_config["names"][0])
    if data_config["nc"] != model.nc:
        raise DataError(
            f"{options.weights or 'the model'} predicts {model.nc} classes but {data_config['yaml_file']} "
            f"has nc={data_config['nc']}; validate on the dataset the model was trained on"
            + (", or score it as one class with --single-cls." if model.nc == 1 else ".")
        )
    size = default_img_size(options.img_size, options.data is not None, data_config, model.fixed_input_hw)
    size = check_img_size(size, model.stride)
    loader = validation_loader(
        data_config, options.task, size, options.batch_size, options.workers, model, options.single_cls
    )
    model.warmup((size, size))
    save_dir = Path(
        options.save_dir or increment_path(Path(options.project) / options.name, options.exist_ok)
    )
    save_dir.mkdir(parents=True, exist_ok=True)
    category_ids = coco_category_ids(data_config, model.nc)
    json_file = (
        save_dir / f"{Path(options.weights).stem or 'model'}_predictions.json" if options.save_json else None
    )
    outputs = _Outputs(save_dir, options.save_txt, options.save_conf, json_file, category_ids)
    thresholds = Thresholds(options.conf_thres, options.iou_thres, options.max_det)
    speed_only, names = options.task == "speed", list(data_config["names"])
    result = evaluate(model, loader, names, thresholds, speed_only, options.quiet, on_image=outputs)
    if not options.quiet:
        result.log(options.verbose)
    results = result.to_dict()
    if options.save_json:
        coco_stats = outputs.write_json(find_annotation_json(data_config), options.quiet)
        if coco_stats is not None:
            results["coco_eval"] = coco_stats
    result.save(save_dir, options.plots, content=results)
    if not options.quiet:
        LOGGER.info("Results saved to %s", save_dir)
    return results


class _Outputs:
    """Per-image predictions as YOLO txt files (labels/) and COCO JSON records (``json_file``: yolov5's name,
    <weights stem>_predictions.json)."""

    def __init__(
        self, save_dir: Path, save_txt: bool, save_conf: bool, json_file: Path | None, category_ids: list[int]
    ) -> None:
        self.save_dir, self.category_ids, self.save_conf = save_dir, category_ids, save_conf
        self.labels_dir = save_dir / "labels" if save_txt else None
        if self.labels_dir is not None:
            self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.json_file = json_file
        self.records: list[dict] | None = [] if json_file is not None else None
        self.image_ids: list = []

    def __call__(self, det: torch.Tensor, path: str, original_hw: tuple[int, int]) -> None:
        if self.labels_dir is not None:
            write_yolo_labels(self.labels_dir / f"{Path(path).stem}.txt", det, original_hw, self.save_conf)
        if self.records is not None:
            self.records += coco_records(det, path, self.category_ids)
            self.image_ids.append(image_id_for(path))

    def write_json(self, annotation_json: Path | None, quiet: bool) -> dict | None:
        """Write ``json_file``; with the dataset's annotation JSON, pycocotools' stats."""
        json_file = self.json_file
        json_file.write_text(json.dumps(self.records))
        LOGGER.info("Saved %d COCO-format detections to %s", len(self.records), json_file)
        if annotation_json is None:
            return None
        return evaluate_coco_json(annotation_json, json_file, self.image_ids, quiet)


def parse_args(argv: Sequence[str] | None = None) -> ValOptions:
    return parse_options(ValOptions, argv, __doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    status, results = script_main("val.py", run, parse_args(argv))
    if status:
        sys.exit(status)
    return results


if __name__ == "__main__":
    main()
