"""Every plot: boxes drawn on images (detect.py), the training-batch grid (train_batch0.jpg), label
statistics (labels.jpg), the metric curves and confusion matrix (validation) and results.png (training).

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state or GUI backend
is involved and plotting works headless and from several threads.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from utils.boxes import box_xywh_to_xyxy
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


# --- boxes, batches and labels -----------------------------------------------------------------

# 20 distinct colors (RGB hex); class i uses entry i % 20.
_PALETTE_HEX = (
    "E6194B 3CB44B FFE119 4363D8 F58231 911EB4 46F0F0 F032E6 BCF60C FABEBE "
    "008080 E6BEFF 9A6324 FFFAC8 800000 AAFFC3 808000 FFD8B1 000075 808080"
).split()
_PALETTE_BGR = [(int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _PALETTE_HEX]


def colors(class_index: int) -> tuple[int, int, int]:
    """The (b, g, r) drawing color of a class."""
    return _PALETTE_BGR[int(class_index) % len(_PALETTE_BGR)]


def color_hex(class_index: int) -> str:
    """The drawing color of a class as '#RRGGBB', for pages that draw boxes as detect.py does."""
    return "#" + _PALETTE_HEX[int(class_index) % len(_PALETTE_HEX)]


def line_width(image_hw: tuple[int, int]) -> int:
    """Box line width in pixels for an image of (height, width): 0.3% of the mean side, at least 2."""
    return max(round(0.003 * sum(image_hw) / 2), 2)


def label_font_scale(image_hw: tuple[int, int]) -> float:
    """cv2.FONT_HERSHEY_SIMPLEX scale of the labels for an image of (height, width): yolov5's line width / 3
    on large images (a 640 px image gets 0.64, text about 14 px high), but at least 0.35 (about 8 px) so
    that labels stay readable, and stay small, on tiny ones."""
    return max(0.001 * sum(image_hw) / 2, 0.35)


def as_numpy(values, dtype=float) -> np.ndarray:
    """A tensor or array-like as a flat-or-shaped numpy array of ``dtype`` (on the CPU)."""
    return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).astype(dtype)


def box_labels(classes, scores=None, names: list[str] | None = None, hide_conf: bool = False) -> list[str]:
    """Each box's label: its class name (or index), then its score unless hide_conf."""
    classes = as_numpy(classes, int).reshape(-1)
    texts = [names[c] if names and 0 <= c < len(names) else str(c) for c in classes.tolist()]
    if scores is None or hide_conf:
        return texts
    return [f"{text} {score:.2f}" for text, score in zip(texts, as_numpy(scores).reshape(-1).tolist())]


def draw_boxes(
    img_bgr: np.ndarray,
    boxes_xyxy,
    classes,
    scores=None,
    names: list[str] | None = None,
    line_thickness: int | None = None,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """Draw boxes (n, 4) xyxy pixels with class (n,) and optional score (n,) labels onto img_bgr, in place,
    each in its class's color. line_thickness: see draw_labeled_boxes. -> img_bgr."""
    classes = as_numpy(classes, int).reshape(-1)
    labels = None if hide_labels else box_labels(classes, scores, names, hide_conf)
    return draw_labeled_boxes(
        img_bgr, boxes_xyxy, [colors(c) for c in classes.tolist()], labels, line_thickness
    )


def draw_labeled_boxes(img_bgr: np.ndarray, boxes_xyxy, box_colors: list, labels: list[str] | None = None,
                       line_thickness: int | None = None) -> np.ndarray:  # fmt: skip
    """Draw boxes (n, 4) xyxy pixels in their colors (b, g, r), each with its label on a filled strip of
    its color (none when labels is None), onto img_bgr, in place. line_thickness: the line width in pixels,
    the labels' font scaled with it (None: both proportional to the image, see line_width and
    label_font_scale). -> img_bgr."""
    boxes = as_numpy(boxes_xyxy).reshape(-1, 4)
    if line_thickness is None:
        thickness, font_scale = line_width(img_bgr.shape[:2]), label_font_scale(img_bgr.shape[:2])
    else:
        thickness = max(int(line_thickness), 1)
        font_scale = thickness / 3
    text_thickness = max(thickness - 1, 1)
    for i, (box, color) in enumerate(zip(boxes, box_colors)):
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(img_bgr, p1, p2, color, thickness, cv2.LINE_AA)
        if labels is None:
            continue
        (text_w, text_h), baseline = cv2.getTextSize(
            labels[i], cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness
        )
        top = p1[1] - text_h - baseline if p1[1] - text_h - baseline >= 0 else p1[1]
        cv2.rectangle(
            img_bgr, (p1[0], top), (p1[0] + text_w, top + text_h + baseline), color, -1, cv2.LINE_AA
        )
        cv2.putText(img_bgr, labels[i], (p1[0], top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), text_thickness, cv2.LINE_AA)  # fmt: skip
    return img_bgr


def plot_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    paths: list[str],
    out_file: str | Path,
    names: list[str] | None = None,
    max_images: int = 16,
    max_size: int = 1920,
) -> None:
    """Save a grid of up to 16 batch images with their boxes.

    images: (B, 3, H, W) RGB, uint8 or float in 0..1. targets: (M, 6) [index, class, cx, cy, w, h]
    normalized, or (M, 7) with a trailing score (predictions).
    """
    images = images[:max_images].detach().cpu().float()
    if images.max() <= 1.0:
        images = images * 255
    targets = targets.detach().cpu().float()
    count, _, height, width = images.shape
    grid = math.ceil(count**0.5)
    scale = min(1.0, max_size / (grid * max(height, width)))
    cell_h, cell_w = math.ceil(height * scale), math.ceil(width * scale)
    canvas = np.full((grid * cell_h, grid * cell_w, 3), 255, dtype=np.uint8)
    for i in range(count):
        img = np.ascontiguousarray(images[i].numpy().astype(np.uint8).transpose(1, 2, 0)[..., ::-1])
        if scale < 1:
            img = cv2.resize(img, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
        rows = targets[targets[:, 0] == i]
        if len(rows):
            boxes = box_xywh_to_xyxy(rows[:, 2:6]).numpy() * [cell_w, cell_h, cell_w, cell_h]
            scores = rows[:, 6].numpy() if rows.shape[1] > 6 else None
            draw_boxes(img, boxes, rows[:, 1].numpy(), scores, names, line_thickness=1)
        if i < len(paths):
            cv2.putText(
                img, Path(paths[i]).name[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (220, 220, 220), 1
            )
        y, x = (i // grid) * cell_h, (i % grid) * cell_w
        canvas[y : y + cell_h, x : x + cell_w] = img
        cv2.rectangle(canvas, (x, y), (x + cell_w - 1, y + cell_h - 1), (255, 255, 255), 2)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_file), canvas)


def plot_labels(labels, names: list[str], out_file: str | Path) -> None:
    """Save class counts, box-center and box-size scatter plots. labels: list of (n, 5) arrays or one
    (N, 5) array of rows (class, cx, cy, w, h) normalized."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(labels, (list, tuple)):
        labels = [np.asarray(lb, dtype=float).reshape(-1, 5) for lb in labels]
        labels = np.concatenate(labels, 0) if labels else np.zeros((0, 5))
    labels = np.asarray(labels, dtype=float).reshape(-1, 5)
    nc = max(len(names), int(labels[:, 0].max()) + 1 if len(labels) else 0)
    counts = np.bincount(labels[:, 0].astype(int), minlength=nc)
    point_colors = [np.array(colors(c)[::-1]) / 255 for c in labels[:, 0].astype(int)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), tight_layout=True)
    axes[0].bar(range(nc), counts, color=[np.array(colors(c)[::-1]) / 255 for c in range(nc)])
    axes[0].set_ylabel("instances")
    if nc <= 30:
        axes[0].set_xticks(
            range(nc), [names[i] if i < len(names) else str(i) for i in range(nc)], rotation=90
        )
    axes[0].set_title(f"{len(labels)} boxes, {nc} classes")
    axes[1].scatter(labels[:, 1], labels[:, 2], s=2, alpha=0.4, c=point_colors or None)
    axes[1].set(xlim=(0, 1), ylim=(1, 0), xlabel="x", ylabel="y", title="box centers")
    axes[2].scatter(labels[:, 3], labels[:, 4], s=2, alpha=0.4, c=point_colors or None)
    axes[2].set(xlim=(0, 1), ylim=(0, 1), xlabel="width", ylabel="height", title="box sizes")
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
