"""Train a RepYOLO / YOLOv5 detector.

    python train.py --cfg repyolov5s.yaml                      # the bundled dataset, its own defaults
    python train.py --cfg repyolov5s.yaml --data data/coco.yaml --img 640 --epochs 300 --batch-size 64
    python train.py --cfg repyolov5s.yaml --weights yolov5s.pt --data D   # grow yolov5 weights, fine-tune
    python train.py --resume                                   # continue the latest run
    torchrun --nproc_per_node 2 train.py --cfg repyolov5s.yaml --data D --device 0,1

Writes runs/train/exp*/ with hyp.yaml, opt.yaml, results.csv (one row per epoch), results.png,
labels.jpg, train_batch0.jpg, validation plots and weights/{last,best}.pt.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from utils.errors import USER_ERRORS
from utils.log import setup_logging
from utils.train.distributed import DistributedContext
from utils.train.options import TrainOptions
from utils.train.trainer import train

LOGGER = logging.getLogger("train")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", default="", help="model YAML, e.g. repyolov5s.yaml (bare names: models/)")
    parser.add_argument(
        "--weights",
        default="",
        help="start from a checkpoint: ours or an ultralytics/yolov5 .pt such as yolov5s.pt (never "
        "downloaded); with a re-parameterized --cfg its plain convs grow into the blocks",
    )
    parser.add_argument("--data", default=None, help="dataset YAML (default: the bundled shapes dataset)")
    parser.add_argument("--hyp", default=None, help="hyperparameter YAML (bare names: data/hyps/)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="total over all GPUs")
    parser.add_argument("--img", "--img-size", "--imgsz", dest="img_size", type=int, default=None)
    parser.add_argument("--device", default="", help="cpu, 0 or 0,1 (empty: first GPU if any)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers per process")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=False, help="last.pt to resume (bare: latest)"
    )
    parser.add_argument("--project", default="runs/train")
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        nargs="?",
        const="ram",
        default=None,
        choices=["ram", "disk"],
        help="cache decoded images in RAM, or on disk as .npy files beside the images",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="passes over the training set per epoch (default 0: enough for 16 batches; 1: one pass)",
    )
    parser.add_argument("--optimizer", default="SGD", choices=["SGD", "AdamW"])
    parser.add_argument("--cos-lr", action="store_true", help="cosine learning-rate decay (default: linear)")
    parser.add_argument(
        "--patience", type=int, default=100, help="early stop after N epochs without improvement"
    )
    parser.add_argument("--freeze", type=int, default=0, help="freeze the first N layers")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under multi-GPU DDP")
    parser.add_argument("--noplots", dest="plots", action="store_false", help="save no plot files")
    parser.add_argument(
        "--no-tensorboard", dest="tensorboard", action="store_false", help="do not write TensorBoard logs"
    )
    parser.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        help="train in float32 (default: mixed precision, float16 on CUDA and bfloat16 on a CPU that "
        "computes it natively)",
    )
    return parser.parse_args(argv)


def run(options: TrainOptions | None = None, stop_after_epochs: int | None = None, **values) -> dict:
    """Train with ``options`` (or ``TrainOptions(**values)``: the flags' names, e.g. cfg=, epochs=);
    returns the run summary of ``utils.train.trainer.train``.

    stop_after_epochs: end after that many epochs as if interrupted (last.pt stays resumable).
    """
    return train(options or TrainOptions(**values), stop_after_epochs)


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging(verbose=DistributedContext.from_environment().is_main)
    options = TrainOptions(**vars(parse_args(argv)))
    try:
        return run(options)
    except USER_ERRORS as error:
        LOGGER.error(f"train.py: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
