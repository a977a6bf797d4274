"""Convert COCO instances annotations (the official JSON) to YOLO label files."""

from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)


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
