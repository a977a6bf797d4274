"""Download COCO 2017 and convert its instances annotations to YOLO labels (needs the network).

Run from the repository root:

    python -m data.scripts.get_coco                 # train + val images, annotations, labels (~20 GB)
    python -m data.scripts.get_coco --splits val    # val only (~1 GB), enough for val.py
    python -m data.scripts.get_coco --dry-run       # show what would be fetched and where

The files land where data/coco.yaml points (``path``, default ../datasets/coco):
images/{train2017,val2017}/, annotations/instances_*.json, labels/{train2017,val2017}/*.txt.
Already downloaded archives are reused.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import urllib.request
import zipfile
from pathlib import Path

if not __package__:
    raise SystemExit("Run this script from the repository root as: python -m data.scripts.get_coco")

from utils.coco import convert_coco_json  # noqa: E402
from utils.data.config import load_data_config  # noqa: E402
from utils.log import setup_logging  # noqa: E402

LOGGER = logging.getLogger(__name__)

BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS = "annotations/annotations_trainval2017.zip"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default=None, help="dataset root (default: 'path' of data/coco.yaml)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument("--dry-run", action="store_true", help="print the downloads and exit")
    return parser.parse_args(argv)


def _download(url: str, destination: Path) -> Path:
    if destination.exists():
        LOGGER.info(f"{destination} already downloaded")
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".part")
    LOGGER.info(f"Downloading {url} -> {destination}")
    with urllib.request.urlopen(url) as response, open(partial, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)
    partial.replace(destination)
    return destination


def run(
    dataset_dir: str | Path | None = None, splits: tuple[str, ...] = ("train", "val"), dry_run: bool = False
):
    """Download the chosen splits and write their YOLO labels. -> the dataset root."""
    root = Path(dataset_dir) if dataset_dir else Path(load_data_config("coco.yaml")["path"])
    # (url, archive file, folder to extract into): the archives hold annotations/ and <split>2017/
    downloads = [(f"{BASE_URL}/{ANNOTATIONS}", root / "downloads" / Path(ANNOTATIONS).name, root)]
    for s in splits:
        downloads.append(
            (f"{BASE_URL}/zips/{s}2017.zip", root / "downloads" / f"{s}2017.zip", root / "images")
        )
    if dry_run:
        for url, destination, target in downloads:
            print(f"{url} -> {destination} -> {target}")
        return root
    for url, destination, target in downloads:
        archive = _download(url, destination)
        LOGGER.info(f"Extracting {archive.name} into {target}")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    for split in splits:
        convert_coco_json(
            root / "annotations" / f"instances_{split}2017.json", root / "labels" / f"{split}2017"
        )
    LOGGER.info(f"COCO is ready in {root}; train with: python train.py --data coco.yaml")
    return root


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    run(args.dir, tuple(args.splits), args.dry_run)


if __name__ == "__main__":
    main()
