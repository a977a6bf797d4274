"""COCO metrics against pycocotools' COCOeval on the same detections, plus empty cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.evaluation.metrics import ConfusionMatrix, DetectionEvaluator, match_detections, pairwise_iou

Case = list[tuple[np.ndarray, np.ndarray]]  # per image: detections (n, 6) xyxy score class, labels (m, 5)


def coco_reference(images: Case, nc: int) -> tuple[float, float]:
    """mAP50-95 and mAP50 by pycocotools (stats[0], stats[1])."""
    annotations, results = [], []
    for image_id, (detections, labels) in enumerate(images, 1):
        for cls, x1, y1, x2, y2 in labels:
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        for x1, y1, x2, y2, score, cls in detections:
            results.append(
                {"image_id": image_id, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": float(score)}
            )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i} for i in range(1, len(images) + 1)],
            "annotations": annotations,
            "categories": [{"id": c + 1} for c in range(nc)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def ours(images: Case, nc: int):
    evaluator = DetectionEvaluator(nc)
    for detections, labels in images:
        evaluator.add_image(detections, labels)
    return evaluator.compute()


def random_labels(rng, count: int, nc: int, size: float = 200.0) -> np.ndarray:
    xy = rng.uniform(0, size * 0.8, (count, 2))
    wh = rng.uniform(8, size * 0.3, (count, 2))
    cls = rng.integers(0, nc, (count, 1))
    return np.concatenate([cls, xy, xy + wh], 1)


def jitter(rng, boxes: np.ndarray, amount: float) -> np.ndarray:
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, 1)
    return boxes + rng.normal(0, amount, boxes.shape) * wh


def detections_from(labels: np.ndarray, scores: np.ndarray, boxes: np.ndarray | None = None, cls=None):
    boxes = labels[:, 1:] if boxes is None else boxes
    cls = labels[:, 0] if cls is None else cls
    return np.concatenate([boxes, scores[:, None], np.asarray(cls, float)[:, None]], 1).reshape(-1, 6)


def make_case(name: str, seed: int = 0) -> tuple[Case, int]:
    rng = np.random.default_rng(seed)
    nc = 3
    images = []
    for index in range(12 if name != "many" else 60):
        labels = random_labels(rng, int(rng.integers(1, 8)), nc)
        n = len(labels)
        if name == "perfect":
            dets = detections_from(labels, rng.uniform(0.3, 1, n))
        elif name == "shuffled":
            dets = detections_from(labels, rng.uniform(0, 1, n), jitter(rng, labels[:, 1:], 0.08))
            fp = random_labels(rng, 3, nc)
            dets = np.concatenate([dets, detections_from(fp, rng.uniform(0, 1, 3))])
        elif name == "missing":
            keep = rng.uniform(size=n) < 0.5
            dets = detections_from(
                labels[keep], rng.uniform(0, 1, keep.sum()), jitter(rng, labels[keep, 1:], 0.05)
            )
        elif name == "duplicates":
            scores = rng.uniform(0.2, 1, n)
            dets = np.concatenate([
                detections_from(labels, scores, jitter(rng, labels[:, 1:], 0.05)),
                detections_from(labels, scores * rng.uniform(0.5, 1.2, n), jitter(rng, labels[:, 1:], 0.05)),
            ])  # fmt: skip
        elif name == "wrong_class":
            cls = np.where(rng.uniform(size=n) < 0.3, (labels[:, 0] + 1) % nc, labels[:, 0])
            dets = detections_from(labels, rng.uniform(0, 1, n), jitter(rng, labels[:, 1:], 0.05), cls)
        elif name == "empty_images":
            if index % 3 == 0:
                labels = labels[:0]
                dets = detections_from(*(lambda f: (f, rng.uniform(0, 1, 2)))(random_labels(rng, 2, nc)))
            elif index % 3 == 1:
                dets = np.zeros((0, 6))
            else:
                dets = detections_from(labels, rng.uniform(0, 1, n), jitter(rng, labels[:, 1:], 0.05))
        elif name == "classes_without_gt":
            nc = 6
            fp = random_labels(rng, 4, 6)
            dets = np.concatenate([
                detections_from(labels, rng.uniform(0, 1, n), jitter(rng, labels[:, 1:], 0.05)),
                detections_from(fp, rng.uniform(0, 1, 4)),
            ])  # fmt: skip
        elif name == "tied_scores":
            scores = np.round(rng.uniform(0, 1, 2 * n), 1)  # many equal scores across and within images
            both = np.concatenate([labels, labels])
            dets = detections_from(both, scores, jitter(rng, both[:, 1:], 0.1))
        elif name == "many":
            scores = rng.uniform(0, 1, n)
            dets = detections_from(labels, scores, jitter(rng, labels[:, 1:], rng.uniform(0, 0.15)))
            fp = random_labels(rng, int(rng.integers(0, 10)), nc)
            dets = np.concatenate([dets, detections_from(fp, rng.uniform(0, 0.8, len(fp)))])
        elif name == "over_100_per_class":
            labels = random_labels(rng, 30, 1)
            boxes = jitter(rng, np.repeat(labels[:, 1:], 5, 0), 0.1)  # 150 detections of class 0
            dets = detections_from(np.repeat(labels, 5, 0), rng.uniform(0, 1, 150), boxes)
        images.append((dets, labels))
    return images, nc


CASES = ["perfect", "shuffled", "missing", "duplicates", "wrong_class", "empty_images",
         "classes_without_gt", "tied_scores", "many", "over_100_per_class"]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_map_matches_pycocotools(name):
    images, nc = make_case(name)
    reference_map, reference_map50 = coco_reference(images, nc)
    metrics = ours(images, nc)
    assert metrics.map50_95 == pytest.approx(reference_map, abs=1e-3)
    assert metrics.map50 == pytest.approx(reference_map50, abs=1e-3)
    if name == "perfect":
        assert metrics.map50_95 == pytest.approx(1.0)
        assert metrics.mean_precision == pytest.approx(1.0) and metrics.mean_recall == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_map_matches_pycocotools_random_seeds(seed):
    images, nc = make_case("many", seed)
    reference_map, reference_map50 = coco_reference(images, nc)
    metrics = ours(images, nc)
    assert metrics.map50_95 == pytest.approx(reference_map, abs=1e-3)
    assert metrics.map50 == pytest.approx(reference_map50, abs=1e-3)


def test_equal_iou_tie_goes_to_later_ground_truth():
    # The first detection overlaps both GTs equally; COCOeval gives it the later one, so the
    # second detection can take the first GT at a high IoU.
    labels = np.array([[0, 0, 0, 10, 10], [0, 2, 0, 12, 10]], float)
    dets = np.array([[1, 0, 11, 10, 0.9, 0], [-1, 0, 9, 10, 0.8, 0]], float)
    images = [(dets, labels)]
    reference_map, reference_map50 = coco_reference(images, 1)
    metrics = ours(images, 1)
    assert metrics.map50_95 == pytest.approx(reference_map, abs=1e-6)
    # IoU 0.82 for both pairs: 2 TP up to t=0.80, none above (first-GT ties would give about 0.40)
    assert metrics.map50_95 == pytest.approx(0.7)


def test_match_detections_threshold_is_inclusive():
    ious = np.array([[0.5], [0.95]])
    tp = match_detections(ious)
    assert tp[0, 0] and not tp[0, 1:].any()  # IoU exactly 0.5 matches at 0.5 only
    assert tp[1].tolist() == [False] + [True] * 9  # at 0.50 the GT is already taken, above it is free


def test_pairwise_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    a = random_labels(rng, 7, 1)[:, 1:]
    b = random_labels(rng, 5, 1)[:, 1:]
    expected = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(pairwise_iou(a, b), expected)
    assert pairwise_iou(a, b[:0]).shape == (7, 0)


def test_empty_cases_report_zeros():
    metrics = ours([], 3)  # no images at all
    assert metrics.map50 == 0 and metrics.map50_95 == 0 and metrics.mean_precision == 0
    no_labels = [(np.array([[0, 0, 10, 10, 0.9, 1]], float), np.zeros((0, 5)))]
    metrics = ours(no_labels, 3)
    assert metrics.map50_95 == 0 and np.isnan(metrics.ap).all() and metrics.instances.sum() == 0
    no_detections = [(np.zeros((0, 6)), np.array([[1, 0, 0, 10, 10]], float))]
    metrics = ours(no_detections, 3)
    assert metrics.map50 == 0 and metrics.mean_recall == 0 and metrics.ap[1, 0] == 0
    # class 2 has labels but no predictions: its AP is 0 and it pulls the mean down
    labels = np.array([[0, 0, 0, 10, 10], [2, 20, 20, 30, 30]], float)
    metrics = ours([(np.array([[0, 0, 10, 10, 0.9, 0]], float), labels)], 3)
    assert metrics.ap[2].tolist() == [0.0] * 10 and metrics.map50 == pytest.approx(0.5)
    assert np.isnan(metrics.ap[1]).all()


def test_evaluator_accepts_tensors_and_rejects_bad_classes():
    evaluator = DetectionEvaluator(2)
    evaluator.add_image(torch.tensor([[0, 0, 10, 10, 0.9, 0]]), torch.tensor([[0, 0, 0, 10, 10]]))
    assert evaluator.compute().map50_95 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        evaluator.add_image(np.zeros((0, 6)), np.array([[5, 0, 0, 1, 1]], float))


def test_confusion_matrix():
    cm = ConfusionMatrix(nc=2)
    labels = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], float)
    detections = np.array(
        [[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 0], [80, 80, 90, 90, 0.7, 1], [50, 50, 60, 60, 0.1, 1]]
    )
    cm.update(detections, labels)
    # rows: predicted (0, 1, background); columns: true (0, 1, background)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    cm.update(np.zeros((0, 6)), np.zeros((0, 5)))
    cm.update(torch.zeros(0, 6), torch.tensor([[0.0, 0, 0, 5, 5]]))
    assert cm.matrix[2, 0] == 1
    np.testing.assert_allclose(cm.normalized().sum(0), [1, 1, 1])


def test_tied_scores_follow_image_id_order_whatever_the_insertion_order():
    images, nc = make_case("tied_scores")
    reference_map, reference_map50 = coco_reference(images, nc)  # COCO ids 1..n in list order
    evaluator = DetectionEvaluator(nc)
    for image_id in reversed(range(1, len(images) + 1)):  # a dataloader may visit images in any order
        evaluator.add_image(*images[image_id - 1], image_id=image_id)
    metrics = evaluator.compute()
    assert metrics.map50_95 == pytest.approx(reference_map, abs=1e-12)
    assert metrics.map50 == pytest.approx(reference_map50, abs=1e-12)


def test_plots_are_written(tmp_path):
    from utils.evaluation.plots import plot_results, plot_validation

    images, nc = make_case("shuffled")
    metrics = ours(images, nc)
    confusion = ConfusionMatrix(nc)
    for detections, labels in images:
        confusion.update(detections, labels)
    files = plot_validation(metrics, confusion, ["a", "b", "c"], tmp_path)
    assert all(f.stat().st_size > 0 for f in files)
    (tmp_path / "empty").mkdir()
    assert len(plot_validation(ours([], 2), ConfusionMatrix(2), ["a", "b"], tmp_path / "empty")) == 5
    csv_file = tmp_path / "results.csv"
    csv_file.write_text("epoch, train/box_loss, metrics/mAP50, note\n0, 0.9, 0.1, x\n1, 0.7, 0.3, y\n")
    assert plot_results(csv_file) == tmp_path / "results.png" and (tmp_path / "results.png").is_file()
    with pytest.raises(ValueError, match="no data rows"):
        header_only = tmp_path / "header_only.csv"
        header_only.write_text("epoch,a\n")
        plot_results(header_only)
