"""Training-mode dataloader throughput: mosaic on, 640 px, 2 workers, batch 16 (images per second).

    python -m bench.dataloader [--images 64] [--batches 30] [--img-size 640] [--workers 2]
    python -m bench.dataloader --cache disk --bundled --img-size 160 --workers 0   # second epoch, cached

Times our loader on synthetic 640 px images (written once to a temporary folder). If the ``yolov5`` pip
package happens to be importable, its loader is timed on the same images with the same hyperparameters
and the ratio is printed; it is not a dependency of this project.

With --cache ram|disk it instead times a whole second epoch without a cache and with that one, on the
synthetic images or (--bundled) a temporary copy of the bundled dataset's train split.
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path

from utils.data.config import load_data_config
from utils.data.dataset import LoaderConfig, create_dataloader
from utils.data.synthetic import generate_dataset
from utils.hyp import load_hyp

HYP_FILE = "hyp.scratch-low.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64, help="synthetic images to generate")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after one warm-up batch")
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing rounds; the best is kept")
    parser.add_argument("--no-yolov5", action="store_true", help="skip the yolov5 comparison")
    parser.add_argument(
        "--cache", choices=["ram", "disk"], help="time the second epoch with this cache vs none"
    )
    parser.add_argument("--bundled", action="store_true", help="with --cache: the bundled train split")
    return parser.parse_args(argv)


def time_loader(loader, batches: int) -> float:
    """Images per second over `batches` batches, after one warm-up batch (worker start-up excluded)."""
    iterator = _forever(loader)
    next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(iterator)[0])
    rate = seen / (time.perf_counter() - start)
    iterator.close()
    return rate


def _forever(loader):
    while True:
        yield from loader


def yolov5_loader(image_dir: Path, args: argparse.Namespace):
    try:
        from yolov5.utils.dataloaders import create_dataloader as yolov5_create_dataloader
    except Exception:  # not installed (the usual case), or its own dependencies missing
        return None
    hyp = load_hyp(HYP_FILE).to_dict()
    loader, _ = yolov5_create_dataloader(
        str(image_dir),
        args.img_size,
        args.batch_size,
        32,
        hyp=hyp,
        augment=True,
        workers=args.workers,
        shuffle=True,
    )
    return loader


def run(args: argparse.Namespace) -> dict:
    """Time each loader `repeats` times, alternating (the machine may be shared), and keep each one's best."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench640"
        generate_dataset(
            root,
            img_size=args.img_size,
            train_images=args.images,
            val_images=0,
            min_object_size=args.img_size // 12,
        )
        image_dir = root / "images" / "train"
        ours, theirs = [], []
        for _ in range(args.repeats):  # a fresh loader each round, shut down before the next one starts
            config = LoaderConfig(
                img_size=args.img_size,
                batch_size=args.batch_size,
                hyp=load_hyp(HYP_FILE),
                augment=True,
                workers=args.workers,
                shuffle=True,
                nc=5,
            )
            loader, _ = create_dataloader(image_dir, config)
            ours.append(time_loader(loader, args.batches))
            del loader
            loader = None if args.no_yolov5 else yolov5_loader(image_dir, args)
            if loader is not None:
                theirs.append(time_loader(loader, args.batches))
            del loader
            gc.collect()
    setting = (
        f"mosaic, {args.img_size} px, {args.workers} workers, batch {args.batch_size}, {args.batches} batches"
    )
    print(
        f"repyolo loader: {max(ours):.1f} images/s ({setting}; runs: {', '.join(f'{v:.1f}' for v in ours)})"
    )
    if not theirs:
        print("yolov5 loader: not timed (the yolov5 pip package is not importable here)")
        return {"repyolo": max(ours), "yolov5": None}
    print(
        f"yolov5 loader:  {max(theirs):.1f} images/s (same images and hyp; "
        f"runs: {', '.join(f'{v:.1f}' for v in theirs)})"
    )
    print(f"ratio repyolo / yolov5: {max(ours) / max(theirs):.2f}")
    return {"repyolo": max(ours), "yolov5": max(theirs)}


def time_epoch(loader) -> float:
    """Images per second over one full pass of the loader."""
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch[0])
    return seen / (time.perf_counter() - start)


def bundled_copy(destination: Path) -> Path:
    """The bundled dataset's train images and labels, copied (the cache writes .npy files beside them)."""
    images = Path(load_data_config(None)["train"][0])  # generated under data/shapes/ on first use
    shutil.copytree(images, destination / "images" / "train")
    shutil.copytree(images.parent.parent / "labels" / "train", destination / "labels" / "train")
    return destination / "images" / "train"


def run_cache(args: argparse.Namespace) -> dict:
    """Second-epoch throughput without a cache and with ``--cache``, alternating, best of ``repeats``.
    Epoch 1 is not timed: it pays for worker start-up and, with a cache, for nothing more (the cache is
    built when the dataset is made, before it)."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundled:
            image_dir = bundled_copy(Path(tmp))
        else:
            root = Path(tmp) / "bench"
            generate_dataset(root, img_size=args.img_size, train_images=args.images, val_images=0,
                             min_object_size=args.img_size // 12)  # fmt: skip
            image_dir = root / "images" / "train"
        rates: dict[str, list[float]] = {"none": [], args.cache: []}
        for _ in range(args.repeats):
            for cache in rates:
                config = LoaderConfig(
                    img_size=args.img_size, batch_size=args.batch_size, hyp=load_hyp(HYP_FILE), augment=True,
                    workers=args.workers, shuffle=True, nc=5, cache=None if cache == "none" else cache,
                )  # fmt: skip
                loader, _ = create_dataloader(image_dir, config)
                time_epoch(loader)
                rates[cache].append(time_epoch(loader))
                del loader
                gc.collect()
    data = "bundled train split" if args.bundled else f"{args.images} synthetic images"
    setting = f"{data}, mosaic, {args.img_size} px, {args.workers} workers, batch {args.batch_size}"
    for cache, values in rates.items():
        print(
            f"second epoch, cache {cache}: {max(values):.1f} images/s "
            f"({setting}; runs: {', '.join(f'{v:.1f}' for v in values)})"
        )
    print(f"ratio cache {args.cache} / none: {max(rates[args.cache]) / max(rates['none']):.2f}")
    return {cache: max(values) for cache, values in rates.items()}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.cache:
        run_cache(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
