"""YoloLoss: target assignment on hand-made cases, consistency with the decoding, and a tiny overfit."""

import math

import pytest
import torch
from torch import nn

from utils.hyp import Hyp
from utils.train.loss import YoloLoss, build_level_targets

YOLOV5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


class FakeDetect(nn.Module):
    """Just the attributes the loss reads from the Detect head."""

    def __init__(self, nc=3, anchors=YOLOV5_ANCHORS, strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.nl, self.na, self.no = nc, len(anchors), len(anchors[0]) // 2, 5 + nc
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))


class TinyDetector(nn.Module):
    """A few convs with three output levels laid out like the model's train-mode output."""

    def __init__(self, detect: FakeDetect):
        super().__init__()
        self.detect = detect
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Conv2d(32, 32, 3, 2, 1) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Conv2d(32, detect.na * detect.no, 1) for _ in range(3)])

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for down, head in zip(self.down, self.heads):
            x = down(x)
            y = head(x)
            b, _, h, w = y.shape
            outputs.append(
                y.view(b, self.detect.na, self.detect.no, h, w).permute(0, 1, 3, 4, 2).contiguous()
            )
        return outputs


def fake_predictions(batch=2, img=64, nc=3, strides=(8, 16, 32), fill=0.0):
    return [torch.full((batch, 3, img // s, img // s, 5 + nc), fill) for s in strides]


def assigned_cells(level):
    return sorted(zip(level.anchor.tolist(), level.cell_x.tolist(), level.cell_y.tolist()))


def test_box_at_cell_corner_goes_to_its_cell_and_the_two_nearest_neighbours():
    anchors = torch.tensor([[2.0, 2.0], [20.0, 20.0]])  # grid units; only the first fits
    targets = torch.tensor([[0, 1, 2 / 8, 2 / 8, 2 / 8, 2 / 8]])  # centre exactly at the corner (2, 2)
    level = build_level_targets(targets, anchors, (8, 8), anchor_t=4.0)
    assert assigned_cells(level) == [(0, 1, 2), (0, 2, 1), (0, 2, 2)]
    offsets = {
        (x, y): b[:2].tolist() for x, y, b in zip(level.cell_x.tolist(), level.cell_y.tolist(), level.box)
    }
    assert offsets == {(2, 2): [0.0, 0.0], (1, 2): [1.0, 0.0], (2, 1): [0.0, 1.0]}
    assert torch.allclose(level.box[:, 2:], torch.tensor([2.0, 2.0]))
    assert level.classes.tolist() == [1, 1, 1] and level.image.tolist() == [0, 0, 0]


def test_neighbour_choice_follows_the_nearer_half_and_stays_inside_the_grid():
    anchors = torch.tensor([[1.0, 1.0]])
    # centre (3.7, 0.2): right neighbour in x; the upper neighbour would be row -1, outside the grid
    targets = torch.tensor([[1, 0, 3.7 / 8, 0.2 / 8, 1 / 8, 1 / 8], [0, 2, 1.0, 1.0, 1 / 8, 1 / 8]])
    level = build_level_targets(targets, anchors, (8, 8), anchor_t=4.0)
    cells = sorted(zip(level.image.tolist(), level.cell_x.tolist(), level.cell_y.tolist()))
    # the box centred on the bottom-right image corner stays in the last cell and has no outside neighbour
    assert cells == [(0, 7, 7), (1, 3, 0), (1, 4, 0)]
    assert (level.box[:, :2] >= -0.5).all() and (level.box[:, :2] <= 1.5).all()


def test_box_too_large_for_every_anchor_is_not_matched():
    detect = FakeDetect(anchors=[[4, 4, 5, 5, 6, 6]] * 3)
    loss_fn = YoloLoss(detect, Hyp())
    targets = torch.tensor([[0, 1, 0.5, 0.5, 1.0, 1.0]])  # 64 px box, anchors <= 6 px: ratio > 10
    predictions = fake_predictions()
    assert all(level.image.numel() == 0 for level in loss_fn.build_targets(predictions, targets))
    total, (box, obj, cls) = loss_fn(predictions, targets)
    assert box == 0 and cls == 0 and obj > 0 and torch.isfinite(total)


def test_ratio_threshold_comes_from_the_hyp():
    anchors = torch.tensor([[1.0, 1.0]])
    targets = torch.tensor([[0, 0, 0.5, 0.5, 3.5 / 8, 1 / 8]])  # width ratio 3.5
    assert build_level_targets(targets, anchors, (8, 8), anchor_t=4.0).image.numel() == 3
    assert build_level_targets(targets, anchors, (8, 8), anchor_t=3.0).image.numel() == 0


@pytest.mark.parametrize("label_smoothing,fl_gamma", [(0.0, 0.0), (0.1, 1.5)])
def test_image_without_boxes_gives_objectness_loss_only(label_smoothing, fl_gamma):
    loss_fn = YoloLoss(FakeDetect(), Hyp(label_smoothing=label_smoothing, fl_gamma=fl_gamma))
    total, components = loss_fn(fake_predictions(fill=0.3), torch.zeros((0, 6)))
    assert torch.isfinite(total) and total > 0
    assert components[0] == 0 and components[2] == 0 and components[1] > 0
    assert math.isclose(total.item(), components.sum().item() * 2, rel_tol=1e-6)  # x batch size 2


def test_predictions_that_decode_to_the_targets_have_zero_box_loss():
    detect = FakeDetect()
    loss_fn = YoloLoss(detect, Hyp())
    targets = torch.tensor([[0, 0, 0.3, 0.6, 0.25, 0.4], [1, 2, 0.71, 0.2, 0.1, 0.12]])
    predictions = fake_predictions(fill=-5.0)
    for raw, level in zip(predictions, loss_fn.build_targets(predictions, targets)):
        xy = torch.logit((level.box[:, :2] + 0.5) / 2)
        wh = torch.logit(torch.sqrt(level.box[:, 2:] / level.anchor_wh) / 2)
        raw[level.image, level.anchor, level.cell_y, level.cell_x, :4] = torch.cat([xy, wh], 1)
    _, (box, _, _) = loss_fn(predictions, targets)
    assert box.item() < 1e-5


def test_loss_is_finite_and_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    detect = FakeDetect()
    model = TinyDetector(detect)
    hyp = Hyp(box=0.05, cls=0.5 * 3 / 80, obj=1.0 * (64 / 640) ** 2)
    loss_fn = YoloLoss(detect, hyp)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor(
        [[0, 0, 0.3, 0.3, 0.3, 0.4], [0, 1, 0.7, 0.6, 0.2, 0.2], [1, 2, 0.5, 0.5, 0.6, 0.5]]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        total, components = loss_fn(model(images), targets)
        assert torch.isfinite(total) and torch.isfinite(components).all()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(components)
    assert losses[-1].sum() < 0.5 * losses[0].sum()
    assert (losses[-1] < losses[0]).all()  # box, objectness and class terms all go down
