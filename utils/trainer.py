"""A training run: build the model, data and optimizer from resolved options, run the epochs with
per-epoch validation and checkpoints, then validate best.pt. train.py parses the command line."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import val as validation
from models.yolo import Model
from utils.augment import check_img_size
from utils.autoanchor import check_anchors
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.curves import plot_results
from utils.dataset import create_dataloader
from utils.ema import ModelEMA
from utils.hyp import Hyp, load_hyp
from utils.loss import YoloLoss
from utils.optim import (
    MIN_STEPS_PER_EPOCH,
    EpochSchedule,
    accumulation_steps,
    build_optimizer,
    scaled_weight_decay,
    warmup_iterations,
)
from utils.plots import plot_labels
from utils.train_loop import (
    DistributedContext,
    EarlyStopping,
    ResultsTable,
    final_checkpoint,
    plain,
    train_one_epoch,
    training_checkpoint,
)

LOGGER = logging.getLogger(__name__)


def scale_loss_gains(hyp: Hyp, nl: int, nc: int, img_size: int) -> Hyp:
    """The hyp file's gains are tuned for 3 levels, 80 classes and 640 px; rescale them (yolov5's rule):
    box x 3/nl, cls x nc/80 x 3/nl, obj x (img/640)^2 x 3/nl (objectness count grows with the image area)."""
    levels = 3 / nl
    return dataclasses.replace(
        hyp,
        box=hyp.box * levels,
        cls=hyp.cls * nc / 80 * levels,
        obj=hyp.obj * (img_size / 640) ** 2 * levels,
    )


def build_model(opt: dict, nc: int, names: list[str], resume_ckpt: dict | None) -> Model:
    """A model from --cfg, from the resumed run, or from --weights (transferred by matching names, shapes)."""
    if resume_ckpt is not None:
        model = Model(resume_ckpt["model_yaml"], nc=nc)
        model.load_state_dict(resume_ckpt["raw_model"])
    elif opt["weights"]:
        model = _transfer_weights(opt["weights"], opt["cfg"], nc)
    elif opt["cfg"]:
        model = Model(opt["cfg"], nc=nc)
    else:
        raise SystemExit("No model given; pass --cfg (e.g. --cfg repyolov5s.yaml) or --weights W.")
    model.names = list(names)
    if opt["freeze"] > 0:
        prefixes = tuple(f"model.{i}." for i in range(opt["freeze"]))
        frozen = 0
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith(prefixes))
            frozen += not parameter.requires_grad
        LOGGER.info(f"Froze the first {opt['freeze']} layers ({frozen} parameter tensors).")
    return model


def _transfer_weights(weights: str, cfg: str, nc: int) -> Model:
    source = load_checkpoint(weights)
    if source.get("deploy"):
        raise SystemExit(
            f"{weights} is a fused (deploy) checkpoint, which cannot be trained; pass the training-form "
            "checkpoint (e.g. best.pt, not best_fused.pt) to --weights."
        )
    model = Model(cfg or source["model_yaml"], nc=nc)
    own = model.state_dict()
    # with --cfg the anchors are the cfg's; without, the checkpoint's (possibly evolved by AutoAnchor)
    matched = {
        k: v
        for k, v in source["model"].items()
        if k in own and v.shape == own[k].shape and not (cfg and k.endswith(".anchors"))
    }
    model.load_state_dict(matched, strict=False)
    LOGGER.info(f"Transferred {len(matched)}/{len(own)} items from {weights}")
    return model


class Trainer:
    """One training run: __init__ builds everything, train() runs the epochs and the final validation."""

    def __init__(
        self,
        opt: dict,
        data: dict,
        context: DistributedContext,
        device: torch.device,
        save_dir,
        resume_ckpt: dict | None = None,
    ):
        self.opt, self.data, self.context, self.device = opt, data, context, device
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.resumed = resume_ckpt is not None
        self.hyp = Hyp.from_dict(resume_ckpt["hyp"]) if self.resumed else load_hyp(opt["hyp"])
        # channels_last: oneDNN (CPU) and cuDNN (tensor cores) run convs faster in NHWC; measured on the
        # 2-core CPU, a repyolov5s training step at 160 px, batch 16, takes ~13% less time.
        model = build_model(opt, data["nc"], data["names"], resume_ckpt)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.img_size = check_img_size(opt["img_size"], max(int(self.model.stride.max()), 32))
        if opt["batch_size"] % context.world_size:
            raise SystemExit(
                f"--batch-size {opt['batch_size']} is not a multiple of the {context.world_size} processes."
            )
        if context.is_main:
            self._write_run_files()
        self._build_data()
        if context.is_main and not self.resumed:
            self._check_dataset_and_anchors()
        self._build_optimization(resume_ckpt)

    def _write_run_files(self) -> None:
        (self.save_dir / "weights").mkdir(parents=True, exist_ok=True)
        with open(self.save_dir / "hyp.yaml", "w") as f:
            yaml.safe_dump(self.hyp.to_dict(), f, sort_keys=False)
        with open(self.save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(plain(self.opt), f, sort_keys=False)
        LOGGER.info("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in self.hyp.to_dict().items()))

    def _build_data(self) -> None:
        opt, context, stride, nc = self.opt, self.context, int(self.model.stride.max()), self.data["nc"]
        per_rank_batch = opt["batch_size"] // context.world_size
        self.train_loader, self.train_set = create_dataloader(
            self.data["train"],
            self.img_size,
            per_rank_batch,
            stride,
            self.hyp,
            augment=True,
            workers=opt["workers"],
            shuffle=True,
            cache=opt["cache"],
            rank=context.rank,
            seed=opt["seed"],
            prefix="train: ",
            nc=nc,
        )
        self.val_loader = None
        if context.is_main:
            self.val_loader, _ = create_dataloader(
                self.data["val"],
                self.img_size,
                per_rank_batch * 2,
                stride,
                None,
                rect=True,
                pad=0.5,
                workers=opt["workers"],
                cache=opt["cache"],
                prefix="val: ",
                nc=nc,
            )

    def _check_dataset_and_anchors(self) -> None:
        plot_labels(self.train_set.labels, self.data["names"], self.save_dir / "labels.jpg")
        detect = self.model.detect
        if check_anchors(
            detect,
            self.train_set.labels,
            self.train_set.shapes,
            self.img_size,
            self.hyp.anchor_t,
            seed=self.opt["seed"],
        ):
            self.model.yaml["anchors"] = [
                [round(v, 2) for v in row] for row in detect.anchors.view(detect.nl, -1).tolist()
            ]

    def _build_optimization(self, resume_ckpt: dict | None) -> None:
        opt, hyp = self.opt, self.hyp
        self.batches = len(self.train_loader)
        self.accumulate = accumulation_steps(opt["batch_size"], self.batches)
        weight_decay = scaled_weight_decay(hyp.weight_decay, opt["batch_size"], self.accumulate)
        LOGGER.info(
            f"Gradient accumulation: {self.accumulate} batch(es) of {opt['batch_size']} per optimizer step "
            f"(towards a nominal batch of 64, capped so each epoch of {self.batches} batches keeps at least "
            f"{MIN_STEPS_PER_EPOCH} steps); weight_decay scaled to {weight_decay:.3g}."
        )
        self.optimizer = build_optimizer(self.model, opt["optimizer"], hyp.lr0, hyp.momentum, weight_decay)
        self.schedule = EpochSchedule(self.optimizer, opt["epochs"], hyp.lrf, opt["cos_lr"])
        self.ema = ModelEMA(self.model) if self.context.is_main else None
        self.start_epoch, self.best_fitness = 0, 0.0
        if resume_ckpt is not None:
            self.optimizer.load_state_dict(resume_ckpt["optimizer"])
            self.start_epoch = resume_ckpt["epoch"] + 1
            self.best_fitness = float(resume_ckpt.get("best_fitness") or 0.0)
            if self.ema is not None:
                self.ema.ema.load_state_dict(resume_ckpt["model"])
                self.ema.updates = int(resume_ckpt["ema_updates"])
        self.warmup = warmup_iterations(hyp, self.batches, opt["epochs"])
        gains = scale_loss_gains(hyp, self.model.detect.nl, self.data["nc"], self.img_size)
        LOGGER.info(
            f"loss gains scaled for {self.img_size} px, {self.data['nc']} classes: "
            f"box={gains.box:.4g}, obj={gains.obj:.4g}, cls={gains.cls:.4g}"
        )
        self.loss_fn = YoloLoss(self.model.detect, gains)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        if self.context.distributed:
            if opt["sync_bn"] and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            elif opt["sync_bn"]:
                LOGGER.warning("--sync-bn needs CUDA; training with per-process BatchNorm on CPU.")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                self.model, device_ids=ids, output_device=ids[0] if ids else None
            )

    def train(self, stop_after_epochs: int | None = None) -> dict:
        """Run the remaining epochs; returns the run summary (see train.run)."""
        opt, epochs, main = self.opt, self.opt["epochs"], self.context.is_main
        table = ResultsTable(self.save_dir / "results.csv") if main else None
        stopper = EarlyStopping(opt["patience"])
        elapsed_before = 0.0
        if main and self.resumed:
            table.truncate(self.start_epoch)
            elapsed_before = self._restore_history(table, stopper)
        last_step = self.start_epoch * self.batches - 1
        start_time, epoch = time.time(), self.start_epoch - 1
        if main:
            LOGGER.info(
                f"Image size {self.img_size}, {self.batches} batches per epoch, results in {self.save_dir}\n"
                f"Starting training for {epochs} epochs (from epoch {self.start_epoch + 1})..."
            )
        for epoch in range(self.start_epoch, epochs):
            self.schedule.set_epoch(epoch)
            if self.context.distributed:
                self.train_loader.sampler.set_epoch(epoch)
            plot_file = self.save_dir / "train_batch0.jpg" if main and epoch == 0 else None
            mean_loss, last_step = train_one_epoch(
                self.model,
                self.train_loader,
                self.loss_fn,
                self.optimizer,
                self.scaler,
                self.ema,
                epoch=epoch,
                epochs=epochs,
                hyp=self.hyp,
                optimizer_name=opt["optimizer"],
                lr_factor=self.schedule.factor(epoch),
                accumulate=self.accumulate,
                warmup=self.warmup,
                last_step=last_step,
                context=self.context,
                plot_file=plot_file,
                names=self.data["names"],
            )
            stop = False
            if main:
                elapsed = elapsed_before + time.time() - start_time
                stop = self._end_epoch(epoch, mean_loss, table, stopper, elapsed)
            if stop_after_epochs is not None and epoch + 1 - self.start_epoch >= stop_after_epochs:
                LOGGER.info(f"Stopping after epoch {epoch + 1} as asked; resume with --resume.")
                return self._summary(epoch, finished=False)
            if self.context.distributed:
                flag = [stop]
                dist.broadcast_object_list(flag, src=0)
                stop = flag[0]
            if stop:
                break
        if main:
            self._finish(epoch, elapsed_before + time.time() - start_time)
        return self._summary(epoch, finished=True)

    def _restore_history(self, table: ResultsTable, stopper: EarlyStopping) -> float:
        """Early-stopping state and elapsed time from the rows of the epochs already done."""
        rows = table.rows()
        for row in rows:
            fitness = 0.1 * float(row["metrics/mAP_0.5"]) + 0.9 * float(row["metrics/mAP_0.5:0.95"])
            stopper.best_fitness, stopper.best_epoch = max(
                (stopper.best_fitness, stopper.best_epoch), (fitness, int(row["epoch"]))
            )
        return float(rows[-1]["time"]) if rows else 0.0

    def _end_epoch(
        self, epoch: int, mean_loss: torch.Tensor, table: ResultsTable, stopper, elapsed: float
    ) -> bool:
        """Validate the EMA model, log the row, save last.pt (and best.pt); returns whether to stop."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.ema.copy_attributes(self.model)
        metrics = validation.run(
            model=self.ema.ema, dataloader=self.val_loader, names=self.data["names"], plots=False
        )
        map50, map50_95 = float(metrics["mAP50"] or 0.0), float(metrics["mAP50_95"] or 0.0)
        fitness = 0.1 * map50 + 0.9 * map50_95
        table.append(
            {
                "epoch": epoch,
                "train/box_loss": mean_loss[0].item(),
                "train/obj_loss": mean_loss[1].item(),
                "train/cls_loss": mean_loss[2].item(),
                "metrics/precision": float(metrics["precision"] or 0.0),
                "metrics/recall": float(metrics["recall"] or 0.0),
                "metrics/mAP_0.5": map50,
                "metrics/mAP_0.5:0.95": map50_95,
                "x/lr0": lrs[0],
                "x/lr1": lrs[1],
                "x/lr2": lrs[2],
                "time": round(elapsed, 1),
            }
        )
        is_best = fitness >= self.best_fitness
        self.best_fitness = max(self.best_fitness, fitness)
        ckpt = training_checkpoint(
            self.model,
            self.ema,
            self.optimizer,
            self.schedule,
            epoch=epoch,
            best_fitness=self.best_fitness,
            hyp=self.hyp,
            opt=self.opt,
            data=self.data,
            results={"mAP50": map50, "mAP50_95": map50_95},
        )
        save_checkpoint(ckpt, self.save_dir / "weights" / "last.pt")
        if is_best:
            save_checkpoint(ckpt, self.save_dir / "weights" / "best.pt")
        return stopper(epoch, fitness)

    def _finish(self, epoch: int, elapsed: float) -> None:
        """Strip the optimizer from the checkpoints, validate best.pt with plots, plot results.csv."""
        weights = self.save_dir / "weights"
        LOGGER.info(f"\n{epoch - self.start_epoch + 1} epochs completed in {elapsed / 3600:.3f} hours.")
        for name in ("last.pt", "best.pt"):
            if (weights / name).exists():
                save_checkpoint(final_checkpoint(load_checkpoint(weights / name)), weights / name)
        if (weights / "best.pt").exists():
            LOGGER.info(f"Validating {weights / 'best.pt'}...")
            model, _ = load_model(weights / "best.pt", self.device)
            self.final_metrics = validation.run(
                model=model,
                dataloader=self.val_loader,
                names=self.data["names"],
                plots=True,
                verbose=True,
                save_dir=self.save_dir,
            )  # ends with "Results saved to <save_dir>"
        else:
            LOGGER.info(f"Results saved to {self.save_dir}")
        plot_results(self.save_dir / "results.csv")

    def _summary(self, epoch: int, finished: bool) -> dict:
        weights = self.save_dir / "weights" if self.save_dir else None
        return {
            "save_dir": self.save_dir,
            "last": weights / "last.pt" if weights else None,
            "best": weights / "best.pt" if weights else None,
            "epochs_done": epoch + 1,
            "finished": finished,
            "best_fitness": self.best_fitness,
            "final": getattr(self, "final_metrics", None),
        }
