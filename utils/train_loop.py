"""The pieces of a training run that train.py strings together: distributed setup, one epoch of
optimization, the results table, checkpoints and early stopping."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from utils.ema import ModelEMA, unwrap_model
from utils.hyp import Hyp
from utils.loss import YoloLoss
from utils.optim import apply_warmup
from utils.plots import plot_batch

LOGGER = logging.getLogger(__name__)
GRAD_CLIP_NORM = 10.0
RESULTS_COLUMNS = [
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "x/lr0",
    "x/lr1",
    "x/lr2",
    "time",
]


@dataclass
class DistributedContext:
    """Where this process sits in a torchrun job; rank -1 and world_size 1 when not distributed."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> DistributedContext:
        return cls(
            rank=int(os.environ.get("RANK", -1)),
            local_rank=int(os.environ.get("LOCAL_RANK", -1)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def init_distributed(context: DistributedContext, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    if not context.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def main_process_first(context: DistributedContext) -> Iterator[None]:
    """Other ranks wait while rank 0 runs the block (dataset generation, label caches), then run it."""
    if context.distributed and not context.is_main:
        dist.barrier()
    yield
    if context.distributed and context.is_main:
        dist.barrier()


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: YoloLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: ModelEMA | None,
    *,
    epoch: int,
    epochs: int,
    hyp: Hyp,
    optimizer_name: str,
    lr_factor: float,
    accumulate: int,
    warmup: int,
    last_step: int,
    context: DistributedContext,
    plot_file: Path | None = None,
    names: list[str] | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass over the loader. Returns (mean losses Tensor[3] (box, obj, cls), last optimizer iteration).

    Iterations are counted from the start of training (epoch * batches + i), so warmup and
    accumulation continue seamlessly after a resume. plot_file: where to draw the first batch.
    """
    device = next(model.parameters()).device
    batches = len(loader)
    model.train()
    progress = enumerate(loader)
    if context.is_main:
        LOGGER.info(
            ("\n" + "%11s" * 7) % ("Epoch", "mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")
        )
        progress = tqdm(progress, total=batches, bar_format="{l_bar}{bar:10}{r_bar}")
    mean_loss = torch.zeros(3, device=device)
    optimizer.zero_grad()
    for i, (images, targets, paths, _shapes) in progress:
        iteration = i + batches * epoch
        if i == 0 and plot_file is not None:
            plot_batch(images, targets, paths, plot_file, names=names)
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last).float() / 255
        step_every = accumulate
        if iteration <= warmup:
            apply_warmup(optimizer, iteration, warmup, lr_factor, hyp, optimizer_name)
            step_every = max(1, round(float(np.interp(iteration, [0, warmup], [1, accumulate]))))
        with torch.autocast(device_type=device.type, enabled=scaler.is_enabled()):
            loss, loss_items = loss_fn(model(images), targets.to(device))
        if context.distributed:
            loss = loss * context.world_size  # DDP averages gradients over ranks; keep the per-image scale
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, batch {i}; lower lr0 in the hyp file."
            )
        scaler.scale(loss).backward()
        if iteration - last_step >= step_every:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRAD_CLIP_NORM)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if ema is not None:
                ema.update(model)
            last_step = iteration
        mean_loss = (mean_loss * i + loss_items) / (i + 1)
        if context.is_main:
            memory = f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G" if device.type == "cuda" else "cpu"
            progress.set_description(
                ("%11s" * 2 + "%11.4g" * 5)
                % (f"{epoch + 1}/{epochs}", memory, *mean_loss.tolist(), targets.shape[0], images.shape[-1])
            )
    return mean_loss.cpu(), last_step


class ResultsTable:
    """results.csv: one row per epoch, appended and flushed, so an interrupted run keeps its history."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, values: dict) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(RESULTS_COLUMNS)
            writer.writerow([_format(values[column]) for column in RESULTS_COLUMNS])

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate(self, epochs_done: int) -> None:
        """Drop rows of epochs >= epochs_done (written after the checkpoint a resume starts from)."""
        rows = [row for row in self.rows() if int(row["epoch"]) < epochs_done]
        self.path.unlink(missing_ok=True)
        for row in rows:
            self.append(row)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 or less disables)."""

    def __init__(self, patience: int = 100):
        self.patience = patience if patience > 0 else math.inf
        self.best_fitness = -math.inf
        self.best_epoch = 0

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = (epoch - self.best_epoch) >= self.patience
        if stop:
            LOGGER.info(
                f"Stopping early: no improvement in the last {self.patience} epochs; the best was epoch "
                f"{self.best_epoch + 1}. Change --patience to train longer (0 disables early stopping)."
            )
        return stop


def training_checkpoint(
    model: nn.Module,
    ema: ModelEMA,
    optimizer: torch.optim.Optimizer,
    schedule,
    *,
    epoch: int,
    best_fitness: float,
    hyp: Hyp,
    opt: dict,
    data: dict,
    results: dict,
) -> dict:
    """Everything a resume needs, as plain data; "model" holds the EMA weights used for inference."""
    raw = unwrap_model(model)
    return {
        "model": {k: v.detach().clone() for k, v in ema.ema.state_dict().items()},
        "model_yaml": raw.yaml,
        "nc": int(raw.nc),
        "names": list(raw.names),
        "deploy": False,
        "epoch": int(epoch),
        "best_fitness": float(best_fitness),
        "date": datetime.now().isoformat(timespec="seconds"),
        "version": _version(),
        "raw_model": {k: v.detach().clone() for k, v in raw.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "ema_updates": int(ema.updates),
        "hyp": hyp.to_dict(),
        "opt": plain(opt),
        "data": plain(data),
        "results": plain(results),
    }


def final_checkpoint(ckpt: dict) -> dict:
    """A finished run's checkpoint: inference weights and metadata only, epoch -1."""
    drop = {"raw_model", "optimizer", "scheduler", "ema_updates"}
    return {**{k: v for k, v in ckpt.items() if k not in drop}, "epoch": -1}


def plain(value):
    """Paths -> str, tuples -> lists, numpy scalars -> Python, recursively (for weights_only loading)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    return str(value)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("repyolo")
    except Exception:  # not installed as a package: the source tree's version
        return "0.1.0"
