"""Train a RepYOLO / YOLOv5 detector.

    python train.py --cfg repyolov5s.yaml                      # the bundled dataset, its own defaults
    python train.py --cfg repyolov5s.yaml --data data/coco.yaml --img 640 --epochs 300 --batch-size 64
    python train.py --resume                                   # continue the latest run
    torchrun --nproc_per_node 2 train.py --cfg repyolov5s.yaml --data D --device 0,1

Writes runs/train/exp*/ with hyp.yaml, opt.yaml, results.csv (one row per epoch), results.png,
labels.jpg, train_batch0.jpg, validation plots and weights/{last,best}.pt.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from utils.checkpoint import CheckpointError, load_checkpoint
from utils.dataset import load_data_config
from utils.device import init_seeds, select_device
from utils.log import setup_logging
from utils.paths import increment_path, latest_run
from utils.train_loop import DistributedContext, init_distributed, main_process_first
from utils.trainer import Trainer

LOGGER = logging.getLogger("train")
# What yolov5 users expect when they bring their own dataset; the bundled dataset's YAML has its own.
USER_DATA_DEFAULTS = {"img_size": 640, "epochs": 100, "batch_size": 16, "hyp": "hyp.scratch-low.yaml"}
NOT_RESUMED = ("device", "workers", "resume")  # options a resumed run takes from its own command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", default="", help="model YAML, e.g. repyolov5s.yaml (bare names: models/)")
    parser.add_argument(
        "--weights", default="", help="initialize from a training checkpoint (matching shapes)"
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
        "--cache", nargs="?", const="ram", default=None, choices=["ram"], help="cache images in RAM"
    )
    parser.add_argument("--optimizer", default="SGD", choices=["SGD", "AdamW"])
    parser.add_argument("--cos-lr", action="store_true", help="cosine learning-rate decay (default: linear)")
    parser.add_argument(
        "--patience", type=int, default=100, help="early stop after N epochs without improvement"
    )
    parser.add_argument("--freeze", type=int, default=0, help="freeze the first N layers")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under multi-GPU DDP")
    return parser.parse_args(argv)


def resolve_options(opt: dict, data: dict, data_given: bool) -> dict:
    """Fill unset --img/--epochs/--batch-size/--hyp from the bundled dataset's `defaults:` block
    (only when --data was not given) or from the yolov5 defaults."""
    defaults = dict(USER_DATA_DEFAULTS)
    if not data_given:
        bundled = data.get("defaults") or {}
        unknown = sorted(set(bundled) - set(defaults))
        if unknown:
            LOGGER.warning(f"{data['yaml_file']}: ignoring unknown keys {unknown} in 'defaults:'.")
        defaults.update({k: v for k, v in bundled.items() if k in defaults})
    return {**opt, **{key: value for key, value in defaults.items() if opt.get(key) is None}}


def load_resume(opt: dict) -> tuple[dict, dict, Path]:
    """(the interrupted run's options with this call's device and workers, its checkpoint, the path)."""
    path = latest_run() if opt["resume"] is True else Path(opt["resume"])
    if path is None:
        raise SystemExit(
            "--resume: no runs/train/*/weights/last.pt found; pass the checkpoint path to resume."
        )
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as error:
        raise SystemExit(str(error)) from None
    if ckpt.get("epoch", -1) < 0 or "optimizer" not in ckpt:
        raise SystemExit(
            f"{path} is from a run that already finished, so there is nothing to resume; "
            f"start a new run with --weights {path} to train it further."
        )
    resumed = {**ckpt["opt"], **{k: opt[k] for k in NOT_RESUMED}, "resume": str(path)}
    LOGGER.info(f"Resuming training from {path} (epoch {ckpt['epoch'] + 2} of {resumed['epochs']}).")
    return resumed, ckpt, path


def run(
    cfg: str = "",
    weights: str = "",
    data: str | None = None,
    hyp: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    img_size: int | None = None,
    device: str = "",
    workers: int = 2,
    resume: bool | str = False,
    project: str = "runs/train",
    name: str = "exp",
    exist_ok: bool = False,
    seed: int = 0,
    cache: str | None = None,
    optimizer: str = "SGD",
    cos_lr: bool = False,
    patience: int = 100,
    freeze: int = 0,
    sync_bn: bool = False,
    stop_after_epochs: int | None = None,
) -> dict:
    """Train; returns {"save_dir", "best", "last", "epochs_done", "finished", "best_fitness",
    "final" (val.run metrics of best.pt)}.

    stop_after_epochs: end this process after that many epochs as if it were interrupted (last.pt
    stays resumable); for tests of --resume.
    """
    opt = {k: v for k, v in locals().items() if k != "stop_after_epochs"}
    context = DistributedContext.from_environment()
    if "," in str(device) and not context.distributed:
        LOGGER.warning(
            f"--device {device} lists several GPUs but this is one process, using the first; "
            f"launch with torchrun --nproc_per_node {len(str(device).split(','))} train.py ... to use all."
        )
    torch_device = init_distributed(context, select_device(device))
    resume_ckpt = None
    if resume:
        opt, resume_ckpt, resume_path = load_resume(opt)
        save_dir = resume_path.parent.parent
    with main_process_first(context):
        data_config = load_data_config(opt["data"])
    opt = resolve_options(opt, data_config, data_given=opt["data"] is not None)
    if not resume:
        save_dir = (
            increment_path(Path(opt["project"]) / opt["name"], opt["exist_ok"]) if context.is_main else None
        )
    init_seeds(opt["seed"] + 1 + context.rank)
    trainer = Trainer(opt, data_config, context, torch_device, save_dir, resume_ckpt)
    try:
        return trainer.train(stop_after_epochs)
    finally:
        if context.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging()
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
