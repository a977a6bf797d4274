"""Parameter groups, learning-rate schedules, warmup, accumulation, loss-gain scaling and the optimizer
step object."""

import pytest

from tests.helpers import small_net
from utils.hyp import Hyp
from utils.train.optim import (
    EpochSchedule,
    accumulation_steps,
    apply_warmup,
    build_optimizer,
    lr_lambda,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)
from utils.train.trainer import scale_loss_gains


def test_parameter_groups_cover_every_parameter_once_with_decay_only_on_weights():
    net = small_net()
    biases, weights, norm_weights = parameter_groups(net)
    assert {id(p) for p in biases + weights + norm_weights} == {id(p) for p in net.parameters()}
    assert len(biases) == 2 and len(weights) == 2 and len(norm_weights) == 1
    for name in ("SGD", "Adam", "AdamW"):
        optimizer = build_optimizer(net, name, lr=0.01, momentum=0.9, weight_decay=1e-3)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 1e-3, 0.0]
    assert build_optimizer(net, "SGD").param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="optimizer 'LAMB' is unknown; use one of SGD, Adam, AdamW"):
        build_optimizer(net, "LAMB")


def test_accumulation_is_capped_for_small_datasets():
    assert accumulation_steps(16, 1000) == 4  # nominal batch 64
    assert accumulation_steps(8, 8) == 1  # 64 images at batch 8: every batch is an optimizer step
    assert accumulation_steps(8, 160) == 5  # capped so an epoch keeps 32 steps
    assert accumulation_steps(16, 38) == 1  # the bundled dataset: 600 images at batch 16
    assert accumulation_steps(128, 100) == 1
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 8, 1) == pytest.approx(5e-4 / 8)


def test_lr_schedules_and_warmup():
    for cosine in (False, True):
        factor = lr_lambda(10, 0.01, cosine)
        assert factor(0) == pytest.approx(1.0) and factor(10) == pytest.approx(0.01)
        assert 0.01 < factor(5) < 1.0
    hyp = Hyp(warmup_epochs=3, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937, lr0=0.01)
    assert warmup_iterations(hyp, 1000, 100) == 3000
    assert warmup_iterations(hyp, 10, 100) == 100  # at least 100 iterations...
    assert warmup_iterations(hyp, 10, 4) == 20  # ...but never more than half of the run
    assert warmup_iterations(hyp, 8, 30) == 24  # 64 images at batch 8: the floor gives way to 1/10 of the run
    optimizer = build_optimizer(small_net(), "SGD", lr=0.01, momentum=0.937)
    schedule = EpochSchedule(optimizer, epochs=10, lrf=0.01)
    apply_warmup(optimizer, 0, 100, schedule.factor(0), hyp, "SGD")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert optimizer.param_groups[1]["momentum"] == pytest.approx(0.8)
    apply_warmup(optimizer, 100, 100, schedule.factor(0), hyp, "SGD")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01] * 3)
    schedule.set_epoch(5)
    restored = EpochSchedule(optimizer, epochs=10, lrf=0.01)  # a resumed run sets the epoch it starts at
    restored.set_epoch(5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * lr_lambda(10, 0.01)(5)] * 3)


def test_loss_gains_are_scaled_for_levels_classes_and_image_size():
    gains = scale_loss_gains(Hyp(box=0.05, cls=0.5, obj=1.0), nl=3, nc=5, img_size=320)
    assert (gains.box, gains.cls, gains.obj) == pytest.approx((0.05, 0.5 * 5 / 80, 0.25))
