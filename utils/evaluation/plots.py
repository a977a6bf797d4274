"""Metric plots: PR and F1 curves, confusion matrix (validation) and results.png (training).

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state or GUI backend
is involved and plotting works headless and from several threads.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.evaluation.metrics import CONF_GRID, RECALL_THRESHOLDS, ConfusionMatrix, DetectionMetrics
from utils.paths import atomic_open

LOGGER = logging.getLogger(__name__)
MAX_LEGEND_CLASSES = 20  # above this many classes, per-class curves are drawn grey and unlabeled


def _class_lines(axes, x: np.ndarray, curves: np.ndarray, labels: list[str]) -> None:
    many = len(curves) > MAX_LEGEND_CLASSES
    for curve, label in zip(curves, labels):
        axes.plot(x, curve, linewidth=1, color="grey" if many else None, label=None if many else label)


def plot_pr_curve(metrics: DetectionMetrics, names: list[str], out_file: str | Path) -> None:
    """Interpolated precision vs recall at IoU 0.5, per class with ground truth and their mean."""
    has_gt = metrics.has_gt
    labels = [f"{names[i]} {metrics.ap50[i]:.3f}" for i in np.nonzero(has_gt)[0]]
    figure = Figure(figsize=(9, 6), tight_layout=True)
    axes = figure.subplots()
    _class_lines(axes, RECALL_THRESHOLDS, metrics.pr_curve[has_gt], labels)
    if has_gt.any():
        mean_curve = metrics.pr_curve[has_gt].mean(0)
        axes.plot(
            RECALL_THRESHOLDS,
            mean_curve,
            linewidth=3,
            color="blue",
            label=f"all classes {metrics.map50:.3f} mAP@0.5",
        )
    _finish(axes, "Recall", "Precision", "Precision-Recall Curve")
    figure.savefig(out_file, dpi=200)


def plot_confidence_curve(
    metrics: DetectionMetrics, names: list[str], out_file: str | Path, which: str = "F1"
) -> None:
    """F1 (or "Precision", "Recall") vs confidence threshold at IoU 0.5, per class and mean."""
    curves = {"F1": metrics.f1_curve, "Precision": metrics.p_curve, "Recall": metrics.r_curve}[which]
    has_gt = metrics.has_gt
    figure = Figure(figsize=(9, 6), tight_layout=True)
    axes = figure.subplots()
    _class_lines(axes, CONF_GRID, curves[has_gt], [names[i] for i in np.nonzero(has_gt)[0]])
    if has_gt.any():
        mean_curve = curves[has_gt].mean(0)
        best = int(mean_curve.argmax())
        label = f"all classes {mean_curve[best]:.2f} at {CONF_GRID[best]:.3f}"
        axes.plot(CONF_GRID, mean_curve, linewidth=3, color="blue", label=label)
    _finish(axes, "Confidence", which, f"{which}-Confidence Curve")
    figure.savefig(out_file, dpi=200)


def _finish(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(bbox_to_anchor=(1.04, 1), loc="upper left")


def plot_confusion_matrix(confusion: ConfusionMatrix, names: list[str], out_file: str | Path) -> None:
    """Column-normalized matrix (true class on x, predicted on y), background last."""
    matrix = confusion.normalized()
    labels = list(names) + ["background"]
    size = len(labels)
    figure = Figure(figsize=(max(6, 0.5 * size + 3), max(5, 0.45 * size + 2.5)), tight_layout=True)
    axes = figure.subplots()
    image = axes.imshow(np.where(matrix > 0.005, matrix, np.nan), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes)
    if size <= 30:
        axes.set_xticks(range(size), labels, rotation=90)
        axes.set_yticks(range(size), labels)
        for row, col in zip(*np.nonzero(matrix > 0.005)):
            color = "white" if matrix[row, col] > 0.5 else "black"
            axes.text(col, row, f"{matrix[row, col]:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xlabel("True")
    axes.set_ylabel("Predicted")
    axes.set_title("Confusion Matrix (normalized per true class)")
    figure.savefig(out_file, dpi=200)


def plot_validation(
    metrics: DetectionMetrics, confusion: ConfusionMatrix, names: list[str], save_dir: str | Path
) -> list[Path]:
    """PR_curve.png, F1_curve.png, P_curve.png, R_curve.png and confusion_matrix.png into save_dir."""
    save_dir = Path(save_dir)
    files = [save_dir / name for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png")]
    plot_pr_curve(metrics, names, files[0])
    for which, out_file in zip(("F1", "Precision", "Recall"), files[1:]):
        plot_confidence_curve(metrics, names, out_file, which)
    files.append(save_dir / "confusion_matrix.png")
    plot_confusion_matrix(confusion, names, files[-1])
    return files


def plot_results(results_csv: str | Path, out_file: str | Path | None = None) -> Path:
    """One small panel per numeric column of a training results CSV against its first column
    (the epoch). Writes results.png beside the CSV unless out_file is given; returns its path."""
    results_csv = Path(results_csv)
    with open(results_csv, newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if row]
    if len(rows) < 2:
        raise ValueError(f"{results_csv} has no data rows yet; train at least one epoch before plotting it.")
    header, data = rows[0], rows[1:]
    columns = {}
    for index, name in enumerate(header):
        try:
            columns[name] = np.array([float(row[index]) for row in data])
        except (ValueError, IndexError):
            LOGGER.debug("%s: column %s is not numeric, not plotted", results_csv, name)
    x_name = header[0]
    x = columns.pop(x_name, np.arange(len(data)))
    num_cols = min(5, max(1, len(columns)))
    num_rows = max(1, -(-len(columns) // num_cols))
    figure = Figure(figsize=(3.2 * num_cols, 2.8 * num_rows), tight_layout=True)
    axes = np.atleast_1d(figure.subplots(num_rows, num_cols)).ravel()
    for axis, (name, values) in zip(axes, columns.items()):
        axis.plot(x, values, marker=".", linewidth=1.5, markersize=5)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel(x_name, fontsize=8)
    for axis in axes[len(columns) :]:
        axis.set_visible(False)
    out_file = Path(out_file) if out_file else results_csv.with_name("results.png")
    with atomic_open(out_file, "wb") as file:  # rewritten by every resumed run
        figure.savefig(file, format="png", dpi=150)
    return out_file
