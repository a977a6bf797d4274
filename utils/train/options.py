"""A training run's options: typed, resolved against the dataset's defaults, stored in every checkpoint as
plain data, and read back from it when a run resumes."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import load_checkpoint
from utils.data.config import bundled_defaults
from utils.errors import CheckpointError, ConfigError
from utils.paths import latest_run

LOGGER = logging.getLogger(__name__)
# What yolov5 users expect when they bring their own dataset; the bundled dataset's YAML has its own.
USER_DATA_DEFAULTS = {"img_size": 640, "epochs": 100, "batch_size": 16, "hyp": "hyp.scratch-low.yaml"}
# Options a resumed run takes from its own call rather than from the interrupted run.
NOT_RESUMED = ("device", "workers")


@dataclass
class TrainOptions:
    """What train.py's flags set. img_size, epochs, batch_size and hyp may be None until ``resolve``."""

    cfg: str = ""  # model YAML (bare names: models/)
    weights: str = ""  # start from a checkpoint, ours or yolov5's (utils.checkpoint.grow_from_checkpoint)
    data: str | None = None  # dataset YAML (None: the bundled shapes dataset)
    hyp: str | None = None  # hyperparameter YAML (bare names: data/hyps/)
    epochs: int | None = None
    batch_size: int | None = None  # total over all processes
    img_size: int | None = None
    device: str = ""
    workers: int = 2  # dataloader workers per process
    resume: bool | str = False  # True: the latest run; a path: that last.pt
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    seed: int = 0
    cache: str | None = None
    repeat: int = 0  # passes over the training set per epoch (0: enough for 16 batches, see epoch_repeats)
    optimizer: str = "SGD"
    cos_lr: bool = False
    patience: int = 100
    freeze: int = 0
    sync_bn: bool = False
    plots: bool = True  # labels.jpg, train_batch0.jpg, results.png and the final validation plots
    tensorboard: bool = True  # log to TensorBoard when the package is installed (rank 0)
    amp: bool = True  # mixed precision where fast: float16 on CUDA, bfloat16 on a CPU with it natively

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
        if self.optimizer not in ("SGD", "AdamW"):
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; use 'SGD' or 'AdamW'.")


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
