"""A training run's options: typed, resolved against the dataset's defaults, stored in every checkpoint as
plain data, and read back from it when a run resumes."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from utils.checkpoint import load_checkpoint
from utils.cli import device_option, exist_ok_option, name_option, option, project_option
from utils.data.config import bundled_defaults
from utils.errors import CheckpointError, ConfigError
from utils.paths import latest_run
from utils.train.optim import OPTIMIZERS

LOGGER = logging.getLogger(__name__)
# What yolov5 users expect when they bring their own dataset; the bundled dataset's YAML has its own.
USER_DATA_DEFAULTS = {"img_size": 640, "epochs": 100, "batch_size": 16, "hyp": "hyp.scratch-low.yaml"}
# Options a resumed run takes from its own call rather than from the interrupted run.
NOT_RESUMED = ("device", "workers")


WANDB = (
    "configures Weights & Biases logging, which RepYOLO does not do (its logs are TensorBoard files and "
    "results.csv in the run folder); drop it."
)
EVOLVE_POPULATION = (
    "seeds yolov5's genetic search from its CSV populations; --evolve searches with Optuna, whose study "
    "database keeps every trial, so drop it (--evolve-storage shares a study)."
)
RESUME_EVOLVE = (
    "continues yolov5's CSV-based search; an --evolve study continues when the same command runs again "
    "(its database keeps every trial), so drop it."
)
BUCKET = (
    "shares yolov5's search through a cloud bucket; --evolve-storage URL shares a study through a "
    "database (PostgreSQL, MySQL), so use that instead."
)
PRUNERS = ("median", "hyperband", "none")


@dataclass
class TrainOptions:
    """What train.py's flags set: each field is its flag (utils.cli.option). img_size, epochs, batch_size and
    hyp may be None until ``resolve``. REFUSED and IGNORED: yolov5's flags this script refuses in one
    sentence, or accepts and drops because they would change nothing (utils.cli.build_parser)."""

    REFUSED: ClassVar[dict[str, str]] = {
        "--evolve_population --evolve-population": EVOLVE_POPULATION,
        "--resume_evolve --resume-evolve": RESUME_EVOLVE,
        "--bucket": BUCKET,
        "--entity": WANDB,
        "--upload_dataset --upload-dataset": WANDB,
        "--bbox_interval --bbox-interval": WANDB,
        "--artifact_alias --artifact-alias": WANDB,
        "--ndjson-console --ndjson-file": "configures ultralytics' NDJSON logging, which RepYOLO does not do "
        "(results.csv in the run folder has a row per epoch); drop it.",
    }  # fmt: skip
    IGNORED: ClassVar[dict[str, str]] = {
        "--local_rank --local-rank": "torchrun (and torch.distributed.launch) also set LOCAL_RANK in the "
        "environment, which is what this script reads",
    }

    cfg: str = option("", "model YAML, e.g. repyolov5s.yaml (bare names: models/)")
    weights: str = option(
        "",
        "start from a checkpoint: ours or an ultralytics/yolov5 .pt such as yolov5s.pt (never downloaded); "
        "with a re-parameterized --cfg its plain convs grow into the blocks",
    )  # see utils.checkpoint.grow_from_checkpoint
    data: str | None = option(None, "dataset YAML (default: the bundled shapes dataset)")
    hyp: str | None = option(None, "hyperparameter YAML (bare names: data/hyps/)")
    epochs: int | None = option(None, None, type=int)
    batch_size: int | None = option(None, "total over all GPUs", type=int)
    img_size: int | None = option(None, None, "--img", "--img-size", "--imgsz", type=int)
    device: str = device_option()
    workers: int = option(2, "dataloader workers per process")
    resume: bool | str = option(
        False, "last.pt to resume (bare: latest)", nargs="?", const=True, action="store"
    )
    project: str = project_option("runs/train")
    name: str = name_option()
    exist_ok: bool = exist_ok_option()
    seed: int = option(0, None)
    cache: str | None = option(
        None,
        "cache decoded images in RAM, or on disk as .npy files beside the images",
        nargs="?",
        const="ram",
        choices=["ram", "disk"],
    )
    repeat: int = option(
        0, "passes over the training set per epoch (default 0: enough for 16 batches; 1: one pass)"
    )  # see utils.train.optim.epoch_repeats
    single_cls: bool = option(False, "train as one class: every label's class is 0, named item")
    rect: bool = option(
        False, "rectangular training batches: images in aspect-ratio order, a shape per batch, no mosaic"
    )  # utils.data.dataset.LoaderConfig.rect; the order is fixed, as yolov5's
    quad: bool = option(False, "quad dataloader: each 4 images of a batch become one of twice the side")
    multi_scale: bool = option(
        False, "resize each training batch to a random size from 0.5x to 1.5x --img (stride multiples)"
    )  # see utils.train.epoch.MultiScale
    image_weights: bool = option(
        False, "draw training images by their classes' weights: inverse frequency x (1 - class mAP)^2"
    )  # see utils.data.sampling; one process only
    optimizer: str = option("SGD", None, choices=list(OPTIMIZERS))
    cos_lr: bool = option(False, "cosine learning-rate decay (default: linear)")
    patience: int = option(100, "early stop after N epochs without improvement")
    freeze: list[int] = option(
        [0], "freeze layers: one number N freezes the first N (backbone=10), several freeze those indices "
        "(first3=0 1 2)", nargs="+", type=int,
    )  # fmt: skip
    noval: bool = option(False, "validate the final epoch only")
    nosave: bool = option(False, "save the final checkpoint only")
    save_period: int = option(-1, "also save weights/epoch{N}.pt every N epochs (-1: never)")
    noautoanchor: bool = option(False, "keep the model's anchors: no AutoAnchor check")
    label_smoothing: float | None = option(
        None, "label smoothing epsilon (default: the hyp file's label_smoothing, else 0)", type=float
    )
    evolve: int | None = option(
        None, "search the hyperparameters with Optuna: N trials in all (bare: 300), each a run of --epochs",
        nargs="?", const=300, type=int,
    )  # fmt: skip  # see utils.train.evolve
    evolve_storage: str | None = option(
        None, "the study's database URL, shared by workers on several machines (default: SQLite file in "
        "the study's folder)",
    )  # fmt: skip
    evolve_pruner: str = option("median", "stop unpromising trials early on their per-epoch fitness",
                                choices=list(PRUNERS))  # fmt: skip
    sync_bn: bool = option(False, "SyncBatchNorm under multi-GPU DDP")
    plots: bool = option(True, "save no plot files", "--noplots", action="store_false")
    tensorboard: bool = option(
        True, "do not write TensorBoard logs", "--no-tensorboard", action="store_false"
    )  # written by rank 0 when the package is installed
    amp: bool = option(
        True,
        "train in float32 (default: mixed precision, float16 on CUDA and bfloat16 on a CPU that computes "
        "it natively)",
        "--no-amp",
        action="store_false",
    )

    def __post_init__(self) -> None:
        if isinstance(self.freeze, int):  # a checkpoint from before --freeze took a list, or Python code
            self.freeze = [self.freeze]

    def frozen_layers(self) -> list[int]:
        """The indices of the layers --freeze names: one number N is range(N), several are those."""
        return list(range(self.freeze[0])) if len(self.freeze) == 1 else sorted(set(self.freeze))

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "options") -> TrainOptions:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            LOGGER.warning(f"{source}: ignoring unknown training options {unknown}.")
        return cls(**{key: value for key, value in values.items() if key in known})

    def resolve(self, data_config: dict) -> TrainOptions:
        """Unset img_size/epochs/batch_size/hyp from a bundled dataset's ``defaults:`` block (see
        utils.data.config.bundled_defaults) or from the yolov5 defaults; then check the values."""
        defaults = dict(USER_DATA_DEFAULTS)
        bundled = bundled_defaults(data_config, named=self.data is not None)
        unknown = sorted(set(bundled) - set(defaults))
        if unknown:
            LOGGER.warning(f"{data_config['yaml_file']}: ignoring unknown keys {unknown} in 'defaults:'.")
        defaults.update({k: v for k, v in bundled.items() if k in defaults})
        unset = {key: value for key, value in defaults.items() if getattr(self, key) is None}
        resolved = dataclasses.replace(self, **unset)
        resolved.check()
        return resolved

    def check(self) -> None:
        """One sentence naming the first option whose value cannot work."""
        for key in ("img_size", "epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} is {value!r}; it must be a whole number of at least 1.")
        if not isinstance(self.repeat, int) or self.repeat < 0:
            raise ConfigError(
                f"repeat is {self.repeat!r}; it must be a whole number: passes per epoch, or 0 for automatic."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
        if any(not isinstance(index, int) or index < 0 for index in self.freeze):
            raise ConfigError(f"freeze is {self.freeze!r}; give layer indices (whole numbers, 0 or more).")
        if self.evolve is not None and (not isinstance(self.evolve, int) or self.evolve < 1):
            raise ConfigError(f"evolve is {self.evolve!r}; give the number of trials, 1 or more.")
        if self.evolve_pruner not in PRUNERS:
            raise ConfigError(
                f"evolve_pruner {self.evolve_pruner!r} is unknown; use one of {', '.join(PRUNERS)}."
            )
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"label_smoothing is {self.label_smoothing}; give an epsilon from 0 to below 1."
            )


def resume_options(options: TrainOptions) -> tuple[TrainOptions, dict, Path]:
    """(the interrupted run's options with this call's device and workers, its checkpoint, its path)."""
    path = latest_run() if options.resume is True else Path(options.resume)
    if path is None:
        raise CheckpointError(
            "no runs/train/*/weights/last.pt to resume was found here; name the last.pt of the run to resume."
        )
    ckpt = load_checkpoint(path)
    if ckpt.get("epoch", -1) < 0 or "optimizer" not in ckpt or "opt" not in ckpt:
        raise CheckpointError(
            f"{path} is from a run that already finished (or is not a training checkpoint), so there is "
            f"nothing to resume; start a new run from its weights to train it further."
        )
    resumed = TrainOptions.from_dict(ckpt["opt"], source=str(path))
    resumed = dataclasses.replace(
        resumed, **{key: getattr(options, key) for key in NOT_RESUMED}, resume=str(path)
    )
    LOGGER.info(f"Resuming training from {path} (epoch {ckpt['epoch'] + 2} of {resumed.epochs}).")
    return resumed, ckpt, path
