"""A training run: ``train(options)`` builds the model, data and optimization from resolved options, runs
the epochs with per-epoch validation and checkpoints, then validates best.pt. train.py parses the
command line into ``TrainOptions``."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.yolo import Model, with_anchor_count
from utils.checkpoint import (
    final_checkpoint,
    grow_from_checkpoint,
    load_checkpoint,
    load_model,
    make_checkpoint,
    plain,
    save_checkpoint,
)
from utils.data.config import load_data_config, single_class_config
from utils.data.dataset import LoaderConfig, create_dataloader
from utils.data.preprocess import check_img_size
from utils.device import init_seeds, select_device, training_precision
from utils.errors import CheckpointError, ConfigError
from utils.evaluation.evaluate import EvaluationResult, evaluate
from utils.evaluation.metrics import fitness
from utils.evaluation.plots import plot_batch, plot_labels, plot_results
from utils.hyp import Hyp, load_hyp
from utils.inference import TorchInferenceModel
from utils.paths import increment_path, write_text_atomic
from utils.train.autoanchor import check_anchors
from utils.train.distributed import DistributedContext, broadcast_flag, init_distributed, main_process_first
from utils.train.ema import ModelEMA, unwrap_model
from utils.train.epoch import BatchHooks, MultiScale, train_one_epoch
from utils.train.loss import YoloLoss
from utils.train.optim import (
    MIN_STEPS_PER_EPOCH,
    EpochSchedule,
    accumulation_steps,
    build_optimizer,
    scaled_weight_decay,
    warmup_iterations,
)
from utils.train.options import TrainOptions, resume_options
from utils.train.results import EarlyStopping, ResultsTable, row_fitness
from utils.train.step import OptimizerStep, StepPlan
from utils.train.tensorboard import TensorBoardLogger

LOGGER = logging.getLogger(__name__)
EpochCallback = Callable[[int, float], None]

# What an epoch that --noval does not validate reports, as yolov5 reports it: zeros.
NOT_VALIDATED = SimpleNamespace(precision=0.0, recall=0.0, map50=0.0, map50_95=0.0)


def train(
    options: TrainOptions, stop_after_epochs: int | None = None, on_epoch: EpochCallback | None = None
) -> dict:
    """Train; returns {"save_dir", "best", "last", "epochs_done", "finished", "best_fitness",
    "final" (the evaluation of best.pt, see utils.evaluation.evaluate.EvaluationResult.to_dict)}.

    stop_after_epochs: end this process after that many epochs as if it were interrupted (last.pt
    stays resumable); for tests of resuming.
    on_epoch: called on rank 0 after each epoch's row and checkpoints with (epoch, fitness of that epoch);
    an exception it raises ends the run there (the hyperparameter search prunes trials with it).
    """
    context = DistributedContext.from_environment()
    if "," in str(options.device) and not context.distributed:
        LOGGER.warning(
            f"device {options.device} lists several GPUs but this is one process, using the first; launch "
            f"with torchrun --nproc_per_node {len(str(options.device).split(','))} to use all."
        )
    device = init_distributed(context, select_device(options.device, context.local_rank))
    resume_ckpt, save_dir = None, None
    if options.resume:
        options, resume_ckpt, resume_path = resume_options(options)
        save_dir = resume_path.parent.parent
    with main_process_first(context):
        data_config = load_data_config(options.data)
    if options.single_cls:  # from here on the dataset has one class (nc 1, its name), as in yolov5
        data_config = single_class_config(data_config)
    options = options.resolve(data_config)
    if resume_ckpt is not None and int(resume_ckpt.get("nc", data_config["nc"])) != data_config["nc"]:
        raise CheckpointError(
            f"{options.resume} was trained on {resume_ckpt['nc']} classes but {data_config['yaml_file']} now "
            f"has nc={data_config['nc']}; restore the data YAML the run started with, or start a new run."
        )
    # weights are read, grown and checked before the run folder exists: a bad file writes nothing
    start = None
    if options.weights and resume_ckpt is None:
        anchors = anchors_per_level(load_hyp(options.hyp))
        start = _transfer_weights(options.weights, options.cfg, data_config["nc"], anchors)
    if resume_ckpt is None and context.is_main:
        save_dir = new_run_folder(options)
    # rank 0 draws what one process draws (DDP hands its initial weights to the others): the same seed
    init_seeds(options.seed + max(context.rank, 0))
    trainer = Trainer(options, data_config, context, device, save_dir, resume_ckpt, start)
    trainer.on_epoch = on_epoch
    try:
        return trainer.train(stop_after_epochs)
    finally:
        if context.distributed and dist.is_initialized():
            dist.destroy_process_group()


def new_run_folder(options: TrainOptions) -> Path:
    """project/name, or the next free project/nameN; with exist_ok the folder itself, but never one that
    already holds a run's results (its history and weights would be mixed with the new run's)."""
    folder = Path(options.project) / options.name
    if options.exist_ok and (folder / "results.csv").exists():
        raise ConfigError(
            f"{folder} already holds a training run (results.csv), and reusing it would mix the two runs' "
            "epochs and replace its weights; choose another name, or resume that run."
        )
    return increment_path(folder, options.exist_ok)


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


def anchors_per_level(hyp: Hyp) -> int:
    """The hyp's ``anchors`` as yolov5 reads it: rounded to anchors per output level, 0 for the model's."""
    return max(round(hyp.anchors), 0)


def build_model(
    options: TrainOptions,
    nc: int,
    names: list[str],
    resume_ckpt: dict | None,
    hyp: Hyp | None = None,
    start: Model | None = None,
) -> Model:
    """A model from the resumed run, the weights (`start`: see _transfer_weights) or the cfg.
    hyp: its rep_branch_gamma is the initial BN scale of the side branches of re-parameterized blocks that
    have them, for a model trained from scratch (1.0 leaves them); its anchors, when set, replace the
    model's with that many per level for AutoAnchor to compute."""
    hyp = hyp or Hyp()
    anchors = anchors_per_level(hyp)
    if resume_ckpt is not None:
        model = Model(resume_ckpt["model_yaml"], nc=nc)
        model.load_state_dict(resume_ckpt["raw_model"])
    elif options.weights:
        model = start if start is not None else _transfer_weights(options.weights, options.cfg, nc, anchors)
    elif options.cfg:
        model = Model(with_anchor_count(options.cfg, anchors) if anchors else options.cfg, nc=nc)
        branch_gamma = hyp.rep_branch_gamma
        if branch_gamma != 1.0:
            for block in model.modules():
                if hasattr(block, "init_side_branches"):
                    block.init_side_branches(branch_gamma)
    else:
        raise ConfigError(
            "no model given; name a model YAML as cfg (e.g. repyolov5s.yaml) or a checkpoint as weights."
        )
    model.names = list(names)
    layers = options.frozen_layers()
    if layers:
        prefixes = tuple(f"model.{i}." for i in layers)
        frozen = 0
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith(prefixes))
            frozen += not parameter.requires_grad
        LOGGER.info(f"Froze layers {layers} ({frozen} parameter tensors).")
    return model


def _transfer_weights(weights: str, cfg: str, nc: int, anchors: int = 0) -> Model:
    """The cfg's model (or the checkpoint's own graph) started from a checkpoint, ours or yolov5's: see
    utils.checkpoint.grow_from_checkpoint. With a cfg the anchors are the cfg's; without, the checkpoint's
    (possibly evolved by AutoAnchor); with ``anchors`` (per level, the hyp's) placeholders for AutoAnchor."""
    ckpt = load_checkpoint(weights)
    if anchors:
        cfg = with_anchor_count(cfg or ckpt["model_yaml"], anchors)
    model, report = grow_from_checkpoint(ckpt, cfg or None, nc, source=str(weights))
    origin = " (an ultralytics/yolov5 checkpoint)" if ckpt.get("source_format") else ""
    LOGGER.info(f"Transferred from {weights}{origin}: {report.summary()}.")
    return model


class Trainer:
    """One training run: __init__ builds everything, train() runs the epochs and the final validation."""

    def __init__(
        self,
        options: TrainOptions,
        data: dict,
        context: DistributedContext,
        device: torch.device,
        save_dir: Path | None,
        resume_ckpt: dict | None = None,
        start: Model | None = None,
    ):
        self.options, self.data, self.context, self.device = options, data, context, device
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.resumed = resume_ckpt is not None
        self.on_epoch: EpochCallback | None = None  # see train()
        self.finishing = bool(resume_ckpt and resume_ckpt.get("finishing"))  # killed in the end-of-run step
        self.hyp = Hyp.from_dict(resume_ckpt["hyp"]) if self.resumed else load_hyp(options.hyp)
        if options.label_smoothing is not None:  # yolov5's flag: it overrides the hyp file
            self.hyp = dataclasses.replace(self.hyp, label_smoothing=options.label_smoothing)
        if options.noautoanchor and anchors_per_level(self.hyp) and not self.resumed:
            raise ConfigError(
                f"the hyperparameters ask for {anchors_per_level(self.hyp)} anchors per level, which "
                "AutoAnchor computes, and --noautoanchor turns it off; drop one of the two."
            )
        model = build_model(options, data["nc"], data["names"], resume_ckpt, self.hyp, start)
        self.model = model.to(device, memory_format=torch.channels_last)  # see utils.train.epoch.train_step
        self.img_size = check_img_size(options.img_size, max(int(self.model.stride.max()), 32))
        if options.batch_size % context.world_size:
            raise ConfigError(
                f"batch_size {options.batch_size} is not a multiple of the {context.world_size} processes; "
                "make it one."
            )
        if options.quad and (options.batch_size // context.world_size) % 4:
            raise ConfigError(
                f"quad makes one image of each 4 in a batch, so the batch size per process must be a "
                f"multiple of 4, and it is {options.batch_size // context.world_size}; make it one."
            )
        if options.image_weights and context.distributed:
            raise ConfigError(
                "image_weights draws the training images in one process and cannot be split between DDP "
                "processes (yolov5 refuses it too); train in one process or drop it."
            )
        self.tensorboard = None
        if context.is_main:
            self._write_run_files()
            self.tensorboard = TensorBoardLogger.create(self.save_dir, options.tensorboard)
        self._build_data()
        if context.is_main and not self.resumed:
            self._check_dataset_and_anchors()
        self._build_optimization(resume_ckpt)

    def _write_run_files(self) -> None:
        (self.save_dir / "weights").mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.save_dir / "hyp.yaml", yaml.safe_dump(self.hyp.to_dict(), sort_keys=False))
        write_text_atomic(self.save_dir / "opt.yaml", yaml.safe_dump(self.options.to_dict(), sort_keys=False))
        LOGGER.info("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in self.hyp.to_dict().items()))

    def _build_data(self) -> None:
        options, context, stride = self.options, self.context, int(self.model.stride.max())
        per_rank_batch = options.batch_size // context.world_size
        common = dict(
            workers=options.workers, cache=options.cache, nc=self.data["nc"], single_cls=options.single_cls
        )
        train_config = LoaderConfig(
            img_size=self.img_size, batch_size=per_rank_batch, stride=stride, hyp=self.hyp, augment=True,
            shuffle=True, rank=context.rank, world_size=context.world_size, seed=options.seed,
            rect=options.rect, pad=0.0, quad=options.quad,  # rect: yolov5 pads training batches by 0
            prefix="train: ", repeat=options.repeat, image_weights=options.image_weights, **common,
        )  # fmt: skip
        self.train_loader, self.train_set = create_dataloader(self.data["train"], train_config)
        grid = max(stride, 32)  # the multiple img_size was rounded to (check_img_size)
        self.multi_scale = MultiScale(self.img_size, grid, options.seed) if options.multi_scale else None
        self.val_loader = None
        if context.is_main:
            val_config = LoaderConfig(
                img_size=self.img_size, batch_size=per_rank_batch * 2, stride=stride, rect=True, pad=0.5,
                prefix="val: ", **common,
            )  # fmt: skip
            self.val_loader, _ = create_dataloader(self.data["val"], val_config)

    def _check_dataset_and_anchors(self) -> None:
        if self.options.plots:
            plot_labels(self.train_set.labels, self.data["names"], self.save_dir / "labels.jpg")
        if self.options.noautoanchor:
            LOGGER.info("AutoAnchor: skipped (--noautoanchor); keeping the model's anchors.")
            return
        detect = self.model.detect
        labels, shapes = self.train_set.labels, self.train_set.shapes
        if check_anchors(detect, labels, shapes, self.img_size, self.hyp.anchor_t, seed=self.options.seed):
            self.model.yaml["anchors"] = [
                [round(v, 2) for v in row] for row in detect.anchors.view(detect.nl, -1).tolist()
            ]

    def _build_optimization(self, resume_ckpt: dict | None) -> None:
        options, hyp = self.options, self.hyp
        self.batches = len(self.train_loader)
        accumulate = accumulation_steps(options.batch_size, self.batches)
        weight_decay = scaled_weight_decay(hyp.weight_decay, options.batch_size, accumulate)
        LOGGER.info(
            f"Gradient accumulation: {accumulate} batch(es) of {options.batch_size} per optimizer step "
            f"(towards a nominal batch of 64, capped so each epoch of {self.batches} batches keeps at least "
            f"{MIN_STEPS_PER_EPOCH} steps); weight_decay scaled to {weight_decay:.3g}."
        )
        optimizer = build_optimizer(self.model, options.optimizer, hyp.lr0, hyp.momentum, weight_decay)
        schedule = EpochSchedule(optimizer, options.epochs, hyp.lrf, options.cos_lr)
        ema = ModelEMA(self.model) if self.context.is_main else None
        self.start_epoch, self.best_fitness = 0, 0.0
        if resume_ckpt is not None:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            self.start_epoch = resume_ckpt["epoch"] + 1
            self.best_fitness = float(resume_ckpt.get("best_fitness") or 0.0)
            if ema is not None:
                ema.ema.load_state_dict(resume_ckpt["model"])
                ema.updates = int(resume_ckpt["ema_updates"])
        gains = scale_loss_gains(hyp, self.model.detect.nl, self.data["nc"], self.img_size)
        LOGGER.info(
            f"loss gains scaled for {self.img_size} px, {self.data['nc']} classes: "
            f"box={gains.box:.4g}, obj={gains.obj:.4g}, cls={gains.cls:.4g}"
        )
        self.loss_fn = YoloLoss(self.model.detect, gains)
        if self.context.distributed:
            if options.sync_bn and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            elif options.sync_bn:
                LOGGER.warning("SyncBatchNorm needs CUDA; training with per-process BatchNorm on CPU.")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                self.model, device_ids=ids, output_device=ids[0] if ids else None
            )
        precision = training_precision(self.device, options.amp)
        if self.context.is_main:
            LOGGER.info(f"Precision: {precision.name} ({precision.reason}).")
        warmup = warmup_iterations(hyp, self.batches, options.epochs)
        last_step = self.start_epoch * self.batches - 1
        quad = 4 if options.quad else 1  # a quad batch holds a quarter of the images (utils.data.quad)
        plan = StepPlan(accumulate, warmup, last_step, loss_scale=self.context.world_size * quad)
        self.step = OptimizerStep(self.model, optimizer, schedule, hyp, plan, ema, precision)

    def train(self, stop_after_epochs: int | None = None) -> dict:
        """Run the remaining epochs; returns the run summary (see ``train``)."""
        try:
            return self._run_epochs(stop_after_epochs)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run_epochs(self, stop_after_epochs: int | None) -> dict:
        epochs, main = self.options.epochs, self.context.is_main
        table = ResultsTable(self.save_dir / "results.csv") if main else None
        stopper = EarlyStopping(self.options.patience)
        elapsed_before = 0.0
        if main and self.resumed:
            table.truncate(self.start_epoch)
            elapsed_before = self._restore_history(table, stopper)
        start_time, epoch = time.time(), self.start_epoch - 1
        if main:
            LOGGER.info(
                f"Image size {self.img_size}, {self.batches} batches per epoch, results in {self.save_dir}\n"
                f"Starting training for {epochs} epochs (from epoch {self.start_epoch + 1})..."
            )
        for epoch in range(self.start_epoch, epochs if not self.finishing else self.start_epoch):
            if self.context.distributed:
                self.train_loader.sampler.set_epoch(epoch)
            plot_batch_now = main and epoch == 0 and self.options.plots
            hooks = BatchHooks(self._plot_first_batch if plot_batch_now else None, self.multi_scale)
            mean_loss = train_one_epoch(
                self.model, self.train_loader, self.loss_fn, self.step, epoch, epochs, show_progress=main,
                hooks=hooks,
            )  # fmt: skip
            stop = False
            if main:
                stop = self._end_epoch(
                    epoch, mean_loss, table, stopper, elapsed_before + time.time() - start_time
                )
                if self.on_epoch is not None:
                    self.on_epoch(epoch, self.epoch_fitness)
            if stop_after_epochs is not None and epoch + 1 - self.start_epoch >= stop_after_epochs:
                LOGGER.info(f"Stopping after epoch {epoch + 1} as asked; the run can be resumed.")
                return self._summary(epoch, finished=False)
            if broadcast_flag(self.context, stop):
                break
        if main:
            self._finish(epoch, elapsed_before + time.time() - start_time)
        return self._summary(epoch, finished=True)

    def _plot_first_batch(self, images: torch.Tensor, targets: torch.Tensor, paths: list) -> None:
        plot_batch(images, targets, paths, self.save_dir / "train_batch0.jpg", names=self.data["names"])
        if self.tensorboard is not None:
            self.tensorboard.log_images([self.save_dir / "train_batch0.jpg"], 0)

    def _restore_history(self, table: ResultsTable, stopper: EarlyStopping) -> float:
        """Early-stopping state and elapsed time from the rows of the epochs already done."""
        rows = table.rows()
        for row in rows:
            stopper.best_fitness, stopper.best_epoch = max(
                (stopper.best_fitness, stopper.best_epoch), (row_fitness(row), int(row["epoch"]))
            )
        return float(rows[-1]["time"]) if rows else 0.0

    def _validate(self, model: nn.Module, save_dir: Path | None = None) -> EvaluationResult:
        """Evaluate on the validation split; with save_dir (the final validation) per-class rows, plots and
        metrics.json too."""
        result = evaluate(TorchInferenceModel(model, self.device), self.val_loader, self.data["names"])
        result.log(verbose=save_dir is not None)
        if save_dir is not None:
            result.save(save_dir, plots=self.options.plots)
            LOGGER.info("Results saved to %s", save_dir)
        return result

    def _end_epoch(
        self, epoch: int, mean_loss: torch.Tensor, table: ResultsTable, stopper: EarlyStopping, elapsed: float
    ) -> bool:
        """Validate the EMA model, log the row, save last.pt (and best.pt); returns whether to stop."""
        ema = self.step.ema
        lrs = [group["lr"] for group in self.step.optimizer.param_groups]
        ema.copy_attributes(self.model)
        final = epoch + 1 == self.options.epochs
        validated = not self.options.noval or final
        result = self._validate(ema.ema) if validated else NOT_VALIDATED
        if validated and self.options.image_weights:  # unvalidated epochs keep the last weights
            self.train_loader.sampler.update(result.class_maps())
        map50, map50_95 = result.map50, result.map50_95
        current = self.epoch_fitness = fitness(map50, map50_95)
        row = {
            "epoch": epoch,
            "train/box_loss": mean_loss[0].item(),
            "train/obj_loss": mean_loss[1].item(),
            "train/cls_loss": mean_loss[2].item(),
            "metrics/precision": result.precision,
            "metrics/recall": result.recall,
            "metrics/mAP_0.5": map50,
            "metrics/mAP_0.5:0.95": map50_95,
            "x/lr0": lrs[0],
            "x/lr1": lrs[1],
            "x/lr2": lrs[2],
            "time": round(elapsed, 1),
        }
        table.append(row)
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(row)
        is_best = current >= self.best_fitness
        self.best_fitness = max(self.best_fitness, current)
        ckpt = self._checkpoint(epoch, {"mAP50": map50, "mAP50_95": map50_95})
        weights = self.save_dir / "weights"
        if not self.options.nosave or final:  # --nosave: the final epoch's checkpoints only
            if is_best:  # before last.pt: a run killed between the two then redoes this epoch
                save_checkpoint(ckpt, weights / "best.pt")
            save_checkpoint(ckpt, weights / "last.pt")
        if self.options.save_period > 0 and epoch % self.options.save_period == 0:
            save_checkpoint(ckpt, weights / f"epoch{epoch}.pt")  # yolov5's names: epoch0.pt, epoch{N}.pt...
        return stopper(epoch, current) if validated else False

    def _checkpoint(self, epoch: int, results: dict) -> dict:
        """Everything a resume needs; "model" holds the EMA weights used for inference."""
        raw = unwrap_model(self.model)
        return make_checkpoint(
            self.step.ema.ema,
            epoch=int(epoch),
            best_fitness=float(self.best_fitness),
            raw_model={k: v.detach().clone() for k, v in raw.state_dict().items()},
            optimizer=self.step.optimizer.state_dict(),
            ema_updates=int(self.step.ema.updates),
            hyp=self.hyp.to_dict(),
            opt=self.options.to_dict(),
            data=plain(self.data),
            results=results,
        )

    def _finish(self, epoch: int, elapsed: float) -> None:
        """The end-of-run step: validate best.pt with plots, plot results.csv, then strip the resume state
        from the checkpoints, last.pt last. Until that final write last.pt is marked "finishing", so a
        run killed anywhere in here resumes straight into this step and completes it."""
        weights = self.save_dir / "weights"
        LOGGER.info(f"\n{epoch - self.start_epoch + 1} epochs completed in {elapsed / 3600:.3f} hours.")
        if not self.finishing and (weights / "last.pt").exists():
            save_checkpoint({**load_checkpoint(weights / "last.pt"), "finishing": True}, weights / "last.pt")
        if (weights / "best.pt").exists():
            LOGGER.info(f"Validating {weights / 'best.pt'}...")
            model, _ = load_model(weights / "best.pt", self.device)
            self.final_metrics = self._validate(model, save_dir=self.save_dir).to_dict()
        else:
            LOGGER.info(f"Results saved to {self.save_dir}")
        if self.options.plots:
            plot_results(self.save_dir / "results.csv")
        if self.tensorboard is not None:  # the final validation plots and results.png
            self.tensorboard.log_images(sorted(self.save_dir.glob("*.png")), epoch)
        for name in ("best.pt", "last.pt"):
            if (weights / name).exists():
                save_checkpoint(final_checkpoint(load_checkpoint(weights / name)), weights / name)

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
