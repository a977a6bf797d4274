"""results.csv (one row per epoch) and early stopping on the fitness it records."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from utils.evaluation.metrics import fitness
from utils.paths import write_text_atomic

LOGGER = logging.getLogger(__name__)
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


class ResultsTable:
    """results.csv: one row per epoch. Every change rewrites the whole (small) file atomically, so a run
    killed at any moment leaves either the old table or the new one, never a partial row or none."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, values: dict) -> None:
        rows = self.rows() + [{column: _format(values[column]) for column in RESULTS_COLUMNS}]
        self._write(rows)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate(self, epochs_done: int) -> None:
        """Drop rows of epochs >= epochs_done (written after the checkpoint a resume starts from)."""
        rows = self.rows()
        kept = [row for row in rows if int(row["epoch"]) < epochs_done]
        if len(kept) != len(rows):
            self._write(kept)

    def _write(self, rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, RESULTS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, text.getvalue())


def row_fitness(row: dict) -> float:
    """The fitness of one results.csv row (see utils.evaluation.metrics.fitness)."""
    return fitness(float(row["metrics/mAP_0.5"]), float(row["metrics/mAP_0.5:0.95"]))


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
                f"{self.best_epoch + 1}. Raise the patience to train longer (0 disables early stopping)."
            )
        return stop
