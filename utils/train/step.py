"""The optimizer step as one object: gradient accumulation (ramped up during warmup), learning-rate and
momentum warmup, the per-epoch schedule, mixed precision (autocast, float16 loss scaling), gradient
clipping and the EMA update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from utils.device import FLOAT32, Precision
from utils.hyp import Hyp
from utils.train.ema import ModelEMA
from utils.train.optim import EpochSchedule, apply_warmup

GRAD_CLIP_NORM = 10.0


@dataclass(frozen=True)
class StepPlan:
    """How batches become optimizer steps.

    accumulate: batches per optimizer step after warmup; warmup: iterations of learning-rate and
    momentum warmup (accumulation ramps up over them too); last_step: the iteration of the last
    optimizer step (a resumed run's, else -1); loss_scale: multiplies the loss before backward (DDP
    averages gradients over ranks, so a distributed run passes its world size to keep the per-image
    scale)."""

    accumulate: int = 1
    warmup: int = 0
    last_step: int = -1
    loss_scale: float = 1.0


class OptimizerStep:
    """Call ``step(loss, iteration)`` once per batch: it back-propagates ``loss`` and, when enough batches
    have accumulated, clips the gradients, steps the optimizer and updates the EMA.

    Iterations are counted from the start of training (epoch * batches + i), so warmup and
    accumulation continue seamlessly after a resume (``plan.last_step``).
    precision: the forward pass's autocast dtype (utils.device.training_precision); float16 also turns
    on the GradScaler.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: EpochSchedule,
        hyp: Hyp,
        plan: StepPlan,
        ema: ModelEMA | None = None,
        precision: Precision = FLOAT32,
    ):
        self.model, self.optimizer, self.schedule, self.hyp, self.ema = model, optimizer, schedule, hyp, ema
        self.accumulate, self.warmup, self.loss_scale = plan.accumulate, plan.warmup, plan.loss_scale
        self.last_step = plan.last_step
        self.device, self.precision = next(model.parameters()).device, precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision.scaled)
        self.adamw = isinstance(optimizer, torch.optim.AdamW)
        self.lr_factor = schedule.factor(schedule.last_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.schedule.set_epoch(epoch)
        self.lr_factor = self.schedule.factor(epoch)

    def autocast(self) -> torch.autocast:
        """The forward pass's autocast context (active only with mixed precision)."""
        return self.precision.autocast(self.device)

    def __call__(self, loss: torch.Tensor, iteration: int) -> bool:
        """Back-propagate ``loss`` of batch ``iteration``; returns whether the optimizer stepped."""
        step_every = self.accumulate
        if iteration <= self.warmup:
            apply_warmup(
                self.optimizer,
                iteration,
                self.warmup,
                self.lr_factor,
                self.hyp,
                "AdamW" if self.adamw else "SGD",
            )
            step_every = max(1, round(float(np.interp(iteration, [0, self.warmup], [1, self.accumulate]))))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {iteration}; lower lr0 in the hyp file."
            )
        self.scaler.scale(loss * self.loss_scale if self.loss_scale != 1 else loss).backward()
        if iteration - self.last_step < step_every:
            return False
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=GRAD_CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        self.last_step = iteration
        return True
