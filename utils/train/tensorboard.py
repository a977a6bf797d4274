"""TensorBoard logging of a training run (``tensorboard --logdir runs/train``): every results.csv column per
epoch as a scalar of the same name (losses, metrics, learning rates), and the run's images (the first
training batch, the final validation plots). Event files go into the run folder, on rank 0 only."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

LOGGER = logging.getLogger(__name__)
NOT_SCALARS = ("epoch",)  # the step, not a value


class TensorBoardLogger:
    """A SummaryWriter over a run folder; ``create`` returns None when logging is off or not installed."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    @classmethod
    def create(cls, log_dir: Path, enabled: bool = True) -> TensorBoardLogger | None:
        if not enabled:
            return None
        try:
            logger = cls(log_dir)
        except ImportError:  # torch.utils.tensorboard needs the tensorboard package
            LOGGER.info("TensorBoard: not logging, the tensorboard package is not installed.")
            return None
        LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {Path(log_dir).parent}'")
        return logger

    def log_epoch(self, row: dict) -> None:
        """One results.csv row: each numeric column but the epoch, at step = epoch."""
        epoch = int(row["epoch"])
        for tag, value in row.items():
            if tag not in NOT_SCALARS and isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_images(self, files: list[Path], step: int) -> None:
        """Image files (e.g. train_batch0.jpg, PR_curve.png), each under its file stem as the tag."""
        for path in files:
            image = cv2.imread(str(path))
            if image is None:
                continue  # a plot that was not drawn (e.g. no validation labels)
            self.writer.add_image(Path(path).stem, image[..., ::-1].copy(), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
