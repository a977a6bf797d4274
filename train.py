"""Train a RepYOLO / YOLOv5 detector.

    python train.py --cfg repyolov5s.yaml                      # the bundled dataset, its own defaults
    python train.py --cfg repyolov5s.yaml --data data/coco.yaml --img 640 --epochs 300 --batch-size 64
    python train.py --cfg repyolov5s.yaml --weights yolov5s.pt --data D   # grow yolov5 weights, fine-tune
    python train.py --resume                                   # continue the latest run
    torchrun --nproc_per_node 2 train.py --cfg repyolov5s.yaml --data D --device 0,1
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...
    python train.py --cfg repyolov5s.yaml --epochs 5 --evolve 20   # hyperparameter search (Optuna)

Writes runs/train/exp*/ with hyp.yaml, opt.yaml, results.csv (one row per epoch), results.png,
labels.jpg, train_batch0.jpg, validation plots and weights/{last,best}.pt. --evolve writes
runs/evolve/NAME/: study.db, trial*/ (runs), best_hyp.yaml, trials.csv and plots.
"""

from __future__ import annotations

import sys
from typing import Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from utils.cli import parse_options, script_main
from utils.train.distributed import DistributedContext
from utils.train.options import TrainOptions
from utils.train.trainer import train


def parse_args(argv: Sequence[str] | None = None) -> TrainOptions:
    return parse_options(TrainOptions, argv, __doc__)


def run(options: TrainOptions | None = None, stop_after_epochs: int | None = None, **values) -> dict:
    """Train with ``options`` (or ``TrainOptions(**values)``: the flags' names, e.g. cfg=, epochs=);
    returns the run summary of ``utils.train.trainer.train``, or with evolve set the study's summary of
    ``utils.train.evolve.evolve`` (Optuna is imported only then).

    stop_after_epochs: end after that many epochs as if interrupted (last.pt stays resumable).
    """
    options = options or TrainOptions(**values)
    if options.evolve is not None:
        from utils.train.evolve import evolve

        return evolve(options)
    return train(options, stop_after_epochs)


def main(argv: Sequence[str] | None = None) -> dict:
    context = DistributedContext.from_environment()
    script = f"train.py (rank {context.rank} of {context.world_size})" if context.distributed else "train.py"
    status, summary = script_main(script, run, parse_args(argv), verbose=context.is_main)
    if status:
        sys.exit(status)
    return summary


if __name__ == "__main__":
    record(main)()  # under torchrun, an uncaught error's traceback goes into the launcher's summary of ranks
