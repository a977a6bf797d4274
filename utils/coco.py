"""The COCO format both ways: the official instances JSON -> YOLO label files (data/scripts/get_coco.py),
and detections -> COCO-format JSON records plus a pycocotools evaluation (val.py --save-json).

Boxes in COCO records are (x, y, width, height) in original-image pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import torch

LOGGER = logging.getLogger(__name__)


COCO_MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # category ids COCO 2017 never uses
COCO80_TO_91 = [i for i in range(1, 91) if i not in COCO_MISSING_IDS]


def coco_category_ids(data_config: dict, nc: int) -> list[int]:
    """Class index -> category id for COCO JSON: the sorted ids of the dataset's annotation JSON when
    it has nc categories; COCO's 80 -> 91 ids for a COCO data YAML; else the class index itself."""
    annotation_json = find_annotation_json(data_config)
    if annotation_json is not None:
        categories = json.loads(annotation_json.read_text()).get("categories", [])
        if len(categories) == nc:
            return sorted(int(category["id"]) for category in categories)
    if nc == 80 and Path(str(data_config.get("yaml_file", ""))).stem.lower().startswith("coco"):
        return COCO80_TO_91
    return list(range(nc))


def coco_records(det: torch.Tensor, path: str, category_ids: list[int]) -> list[dict]:
    """det (n, 6) xyxy, score, class in original pixels -> COCO result dicts (bbox x, y, w, h),
    image_id from the file name (see image_id_for)."""
    image_id = image_id_for(path)
    records = []
    for x1, y1, x2, y2, score, cls in det.tolist():
        bbox = [round(value, 3) for value in (x1, y1, x2 - x1, y2 - y1)]
        records.append(
            {
                "image_id": image_id,
                "category_id": category_ids[int(cls)],
                "bbox": bbox,
                "score": round(score, 5),
            }
        )
    return records


def find_annotation_json(data_config: dict) -> Path | None:
    """The data YAML's val_json (relative to its path), else COCO's annotations/instances_val2017.json."""
    root = Path(str(data_config.get("path", ".")))
    candidates = [root / "annotations" / "instances_val2017.json"]
    if data_config.get("val_json"):
        candidates.insert(0, root / str(data_config["val_json"]))  # an absolute val_json stays absolute
    return next((path for path in candidates if path.is_file()), None)


def image_id_for(path: str | Path) -> int | str:
    """COCO image id from a file name: the stem, as an int when numeric (000000000139.jpg -> 139)."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def evaluate_coco_json(
    annotation_json: Path, predictions_json: Path, image_ids: list[int | str], quiet: bool = False
) -> dict | None:
    """pycocotools' COCOeval of the saved predictions on the validated images (image_ids, including
    those without detections); logs its summary. -> {"mAP50_95", "mAP50"}, or None when it cannot run."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = json.loads(predictions_json.read_text())
    if not records:
        LOGGER.warning("No detections to score with pycocotools; skipping COCOeval.")
        return None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(annotation_json))
            coco_eval = COCOeval(ground_truth, ground_truth.loadRes(str(predictions_json)), "bbox")
            coco_eval.params.imgIds = sorted(set(image_ids))
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
    except Exception as error:  # a foreign annotation file can fail in many ways; the run is still valid
        LOGGER.warning(
            "pycocotools could not evaluate %s against %s: %s", predictions_json, annotation_json, error
        )
        return None
    if not quiet:
        LOGGER.info("pycocotools COCOeval (%s):\n%s", annotation_json, summary.getvalue().rstrip())
    return {"mAP50_95": float(coco_eval.stats[0]), "mAP50": float(coco_eval.stats[1])}


def convert_coco_json(
    json_file: str | Path, labels_dir: str | Path, include_crowd: bool = False
) -> list[str]:
    """Write one YOLO label file per image of a COCO instances JSON.

    Categories are numbered 0..K-1 in the order of their COCO ids (COCO's 80 classes with ids 1..90
    become 0..79). Each file is ``labels_dir/<image file stem>.txt`` with rows ``class cx cy w h``
    normalized by the image size; an image without annotations gets an empty file (a background).
    Crowd annotations are skipped unless include_crowd. -> the class names, in class-index order.
    """
    from pycocotools.coco import COCO

    json_file, labels_dir = Path(json_file), Path(labels_dir)
    if not json_file.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {json_file} does not exist; download the annotations first."
        )
    coco = COCO(str(json_file))
    category_ids = sorted(coco.getCatIds())
    class_of = {category_id: index for index, category_id in enumerate(category_ids)}
    names = [coco.loadCats(category_id)[0]["name"] for category_id in category_ids]
    labels_dir.mkdir(parents=True, exist_ok=True)
    boxes_written = 0
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        width, height = float(info["width"]), float(info["height"])
        rows = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None if include_crowd else False)):
            x, y, w, h = ann["bbox"]  # top-left corner and size, pixels
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, width), min(y + h, height)
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                continue
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            box_w, box_h = (x2 - x1) / width, (y2 - y1) / height
            row = f"{class_of[ann['category_id']]} {cx:.6f} {cy:.6f} {box_w:.6f} {box_h:.6f}\n"
            if row not in rows:
                rows.append(row)
        (labels_dir / f"{Path(info['file_name']).stem}.txt").write_text("".join(rows))
        boxes_written += len(rows)
    LOGGER.info(f"{json_file.name}: {len(coco.getImgIds())} images, {boxes_written} boxes -> {labels_dir}")
    return names
