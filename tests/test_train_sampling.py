"""yolov5's --multi-scale (each training batch resized to a random stride multiple from 0.5x to 1.5x the
image size, utils.train.epoch.MultiScale) and --image-weights (images drawn by class weights that the
trainer rescales by the per-class mAP after each validation, utils.data.sampling)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
import utils.train.trainer as trainer_module
from models.yolo import Model
from utils.data.config import load_data_config
from utils.data.sampling import ImageWeightSampler, class_weights, image_weights
from utils.errors import ConfigError
from utils.evaluation.evaluate import EvaluationResult
from utils.train.distributed import DistributedContext
from utils.train.epoch import MultiScale
from utils.train.options import TrainOptions


@pytest.fixture(scope="module")
def tiny(tiny_study_dataset):
    """The run keywords of conftest's tiny dataset: 8 train and 4 val images at 64 px, 4 batches of 2."""
    root, data_yaml, model_yaml = tiny_study_dataset
    return dict(cfg=str(model_yaml), data=str(data_yaml), project=str(root / "runs"), img_size=64,
                batch_size=2, device="cpu", workers=0, repeat=1, plots=False, tensorboard=False)  # fmt: skip


def labels_of(*classes_per_image: list[int]) -> list[np.ndarray]:
    """Per image, (n, 5) label rows of those classes (the boxes do not matter here)."""
    return [np.array([[c, 0.5, 0.5, 0.1, 0.1] for c in classes], dtype=np.float32).reshape(-1, 5)
            for classes in classes_per_image]  # fmt: skip


# --- multi-scale -----------------------------------------------------------------------------------


def test_multi_scale_sizes_are_stride_multiples_from_half_to_one_and_a_half_times():
    images = torch.rand(2, 3, 64, 64)
    resize = MultiScale(64, 32, seed=0)
    sizes = [tuple(resize(images).shape[2:]) for _ in range(40)]
    assert {height for height, width in sizes} == {32, 64, 96} and all(h == w for h, w in sizes)
    again = MultiScale(64, 32, seed=0)
    assert [tuple(again(images).shape[2:]) for _ in range(40)] == sizes, "not reproducible"
    again.set_epoch(1)
    assert [tuple(again(images).shape[2:]) for _ in range(40)] != sizes, "every epoch draws the same"
    # a non-square batch: the long side takes the drawn size, the other follows, rounded up to the stride
    wide = MultiScale(640, 32, seed=1)
    for _ in range(20):
        height, width = wide(torch.rand(1, 3, 320, 640)).shape[2:]
        assert 320 <= width <= 960 and width % 32 == 0 and height == -(-width // 2 // 32) * 32


def test_multi_scale_resizes_the_training_batches_only_when_asked(tiny, monkeypatch):
    forwards = []
    real_forward = Model.forward

    def spied(self, x, *args, **kwargs):
        if self.training:
            forwards.append(tuple(x.shape[2:]))
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(Model, "forward", spied)
    result = train.run(epochs=2, multi_scale=True, name="multiscale", **tiny)
    assert result["finished"] and len(forwards) == 8
    assert all(h == w and h % 32 == 0 and 32 <= h <= 96 for h, w in forwards)
    assert len(set(forwards)) > 1, "the batch size never changed"
    forwards.clear()
    train.run(epochs=1, name="fixed", **tiny)
    assert forwards == [(64, 64)] * 4


# --- image weights ---------------------------------------------------------------------------------


def test_class_and_image_weights_by_hand():
    # classes: 0 twice and 1 once in image 0; 1 in image 1; 2 in image 2; image 3 is background; 3 unseen
    labels = labels_of([0, 0, 1], [1], [2], [])
    # counts 2, 2, 1 and 0 (read as 1): inverses 1/2, 1/2, 1, 1, summing to 3
    expected_classes = np.array([1 / 6, 1 / 6, 1 / 3, 1 / 3])
    np.testing.assert_allclose(class_weights(labels, nc=4), expected_classes)
    np.testing.assert_allclose(image_weights(labels, expected_classes), [1 / 2, 1 / 6, 1 / 3, 0])
    # after a validation with class 0 at mAP 0.5: its weight x (1 - 0.5)^2 = 1/24
    sampler = ImageWeightSampler(labels, nc=4, num_samples=4)
    sampler.update(np.array([0.5, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(sampler.weights, [2 / 24 + 1 / 6, 1 / 6, 1 / 3, 0])
    sampler.update(np.ones(4))  # nothing left to draw: the last weights stay
    np.testing.assert_allclose(sampler.weights, [2 / 24 + 1 / 6, 1 / 6, 1 / 3, 0])


def test_images_of_a_rare_class_are_drawn_more_often():
    labels = labels_of(*[[0]] * 9, [1])  # class 1 in one image of ten
    sampler = ImageWeightSampler(labels, nc=2, num_samples=10, seed=3)
    draws = Counter(index for _ in range(400) for index in sampler)
    assert len(sampler) == 10 and sum(draws.values()) == 4000
    assert draws[9] / 4000 == pytest.approx(0.5, abs=0.03)  # weights 0.9 against 9 x 0.1, not 1 in 10
    assert list(ImageWeightSampler(labels, 2, 10, seed=3)) == list(ImageWeightSampler(labels, 2, 10, seed=3))
    background = ImageWeightSampler(labels_of([0], [], [1]), nc=2, num_samples=300)
    assert 1 not in set(background), "an image without labels was drawn"


def test_class_maps_give_classes_without_ground_truth_the_mean():
    metrics = SimpleNamespace(has_gt=np.array([True, False, True]), ap50_95=np.array([0.2, np.nan, 0.6]),
                              map50_95=0.4)  # fmt: skip
    result = EvaluationResult(names=["a", "b", "c"], metrics=metrics, confusion=None)
    np.testing.assert_allclose(result.class_maps(), [0.2, 0.4, 0.6])
    assert not EvaluationResult(names=["a", "b"], metrics=None, confusion=None).class_maps().any()


def test_trainer_reweighs_the_images_by_each_validations_class_maps(tiny, monkeypatch):
    """The trainer hands each validation's per-class mAP (here made up) to the sampler."""
    updates, real_update = [], ImageWeightSampler.update
    class_maps = np.array([0.5, 0.0, 0.9, 0.2, 0.0])  # the five shapes

    def update(self, maps):
        updates.append((self, maps))
        return real_update(self, maps)

    monkeypatch.setattr(EvaluationResult, "class_maps", lambda self: class_maps)
    monkeypatch.setattr(ImageWeightSampler, "update", update)
    result = train.run(epochs=2, image_weights=True, name="weights", **tiny)
    assert result["finished"] and len(updates) == 2  # after epochs 1 and 2 (then best.pt's validation)
    sampler = updates[-1][0]
    assert all(maps is class_maps for _, maps in updates)
    first = image_weights(sampler.labels, class_weights(sampler.labels, 5))
    expected = image_weights(sampler.labels, class_weights(sampler.labels, 5) * (1 - class_maps) ** 2)
    np.testing.assert_allclose(sampler.weights, expected)
    assert not np.allclose(expected / expected.sum(), first / first.sum())
    assert len(sampler) == 8  # one pass's worth of images, as repeat=1 asks
    updates.clear()
    train.run(epochs=2, image_weights=True, noval=True, name="weights_noval", **tiny)
    assert len(updates) == 1, "an unvalidated epoch changed the weights"


def test_image_weights_are_refused_under_ddp(tiny):
    options = TrainOptions(image_weights=True, **tiny)  # batch 2: one image per process
    data = load_data_config(options.data)
    context = DistributedContext(rank=0, local_rank=0, world_size=2)
    with pytest.raises(ConfigError, match="DDP"):
        trainer_module.Trainer(options.resolve(data), data, context, torch.device("cpu"), None)


def test_the_flags_parse():
    options = train.parse_args(["--multi-scale", "--image-weights"])
    assert options.multi_scale and options.image_weights
    assert not train.parse_args([]).multi_scale and not train.parse_args([]).image_weights
