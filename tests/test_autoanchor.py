"""AutoAnchor on synthetic box-size arrays."""

import numpy as np
import torch
from torch import nn

from utils.train.autoanchor import anchor_metrics, check_anchors, dataset_box_sizes, evolve_anchors, kmeans

YOLOV5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


class FakeDetect(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchors", torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32).view(3, 3, 2))


def labels_from_sizes(wh_normalized):
    """One label array per image (n, 5) cls,cx,cy,w,h with the given normalized sizes."""
    return [np.array([[0, 0.5, 0.5, w, h]]) for w, h in wh_normalized]


def test_metrics_of_exact_and_impossible_fits():
    anchors = np.array([[10.0, 10.0], [40.0, 20.0]])
    assert anchor_metrics(anchors, np.array([[10.0, 10.0], [40.0, 20.0]]), thr=0.25) == (1.0, 1.0)
    bpr, above = anchor_metrics(anchors, np.array([[200.0, 200.0], [10.0, 12.0]]), thr=0.25)
    assert bpr == 0.5 and above == 0.5


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(1)
    centers = np.array([[1.0, 1.0], [5.0, 5.0], [9.0, 1.0]])
    points = np.concatenate([c + rng.normal(0, 0.1, size=(50, 2)) for c in centers])
    found = kmeans(points, 3)
    found = found[np.argsort(found[:, 0] + found[:, 1] * 0.01)]
    assert np.allclose(found, centers, atol=0.1)


def test_dataset_box_sizes_scale_to_the_letterboxed_image():
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.25]]), np.zeros((0, 5))]
    shapes = np.array([[200, 100], [50, 50]])  # (w, h): the first image becomes 64 x 32 at img_size 64
    assert np.allclose(dataset_box_sizes(labels, shapes, 64), [[32.0, 8.0]])


def test_anchors_that_fit_are_kept():
    rng = np.random.default_rng(0)
    anchors = np.array(YOLOV5_ANCHORS, dtype=float).reshape(-1, 2)
    sizes = anchors[rng.integers(0, 9, 300)] * rng.uniform(0.8, 1.25, size=(300, 1)) / 640
    detect = FakeDetect()
    assert not check_anchors(detect, labels_from_sizes(sizes), np.full((300, 2), 640), img_size=640)
    assert torch.equal(detect.anchors, torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32).view(3, 3, 2))


def test_poorly_fitting_anchors_are_evolved_sorted_and_written_to_the_head():
    rng = np.random.default_rng(0)
    # tiny boxes (2-3 px at 640) and extreme aspect ratios: the default anchors miss most of them
    tiny = rng.uniform(2.0, 3.0, size=(200, 2))
    thin = np.stack([rng.uniform(200, 300, 200), rng.uniform(8, 10, 200)], 1)
    sizes = np.concatenate([tiny, thin]) / 640
    detect = FakeDetect()
    labels, shapes = labels_from_sizes(sizes), np.full((400, 2), 640)
    before, _ = anchor_metrics(detect.anchors.numpy().reshape(-1, 2), sizes * 640, 0.25)
    assert before < 0.98
    assert check_anchors(detect, labels, shapes, img_size=640, generations=300)
    new = detect.anchors.numpy().reshape(-1, 2)
    after, _ = anchor_metrics(new, sizes * 640, 0.25)
    assert after > before and after >= 0.98
    areas = new.prod(1)
    assert (np.diff(areas) >= 0).all()


def test_evolution_handles_fewer_boxes_than_anchors_and_no_boxes():
    anchors = evolve_anchors(np.array([[20.0, 30.0], [40.0, 40.0]]), n=9, generations=20)
    assert anchors.shape == (9, 2) and np.isfinite(anchors).all()
    detect = FakeDetect()
    assert not check_anchors(detect, [np.zeros((0, 5))], np.array([[64, 64]]), img_size=64)
