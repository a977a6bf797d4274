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

import sys
from typing import Sequence

from utils.cli import parse_options, script_main
from utils.train.distributed import DistributedContext
from utils.train.options import TrainOptions
from utils.train.trainer import train


def parse_args(argv: Sequence[str] | None = None) -> TrainOptions:
    return parse_options(TrainOptions, argv, __doc__)


def run(options: TrainOptions | None = None, stop_after_epochs: int | None = None, **values) -> dict:
    """Train with ``options`` (or ``TrainOptions(**values)``: the flags' names, e.g. cfg=, epochs=);
    returns the run summary of ``utils.train.trainer.train``.

    stop_after_epochs: end after that many epochs as if interrupted (last.pt stays resumable).
    """
    return train(options or TrainOptions(**values), stop_after_epochs)


def main(argv: Sequence[str] | None = None) -> dict:
    verbose = DistributedContext.from_environment().is_main
    status, summary = script_main("train.py", run, parse_args(argv), verbose=verbose)
    if status:
        sys.exit(status)
    return summary


if __name__ == "__main__":
    main()
