"""NMS against torchvision's reference ops, and its edge cases."""

from __future__ import annotations

import pytest
import torch
import torchvision

from utils.boxes import box_xywh_to_xyxy
from utils.nms import non_max_suppression


def random_prediction(batch: int = 2, num: int = 400, nc: int = 4, seed: int = 0) -> torch.Tensor:
    """(B, N, 5 + nc) decoded head output with clustered boxes so that NMS has work to do."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(batch, 8, 2, generator=generator) * 200
    pick = torch.randint(0, 8, (batch, num), generator=generator)
    xy = (
        torch.gather(centers, 1, pick[..., None].expand(-1, -1, 2))
        + torch.randn(batch, num, 2, generator=generator) * 6
    )
    wh = 20 + torch.rand(batch, num, 2, generator=generator) * 30
    scores = torch.rand(batch, num, 1 + nc, generator=generator)
    return torch.cat([xy, wh, scores], -1)


def reference_nms(
    image_pred: torch.Tensor, conf_thres: float, iou_thres: float, agnostic: bool
) -> torch.Tensor:
    scores, classes = (image_pred[:, 5:] * image_pred[:, 4:5]).max(1)
    keep = scores > conf_thres
    boxes, scores, classes = box_xywh_to_xyxy(image_pred[keep, :4]), scores[keep], classes[keep]
    if agnostic:
        kept = torchvision.ops.nms(boxes, scores, iou_thres)
    else:
        kept = torchvision.ops.batched_nms(boxes, scores, classes, iou_thres)
    return torch.cat([boxes[kept], scores[kept, None], classes[kept, None].float()], 1)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("conf_thres,iou_thres", [(0.001, 0.6), (0.25, 0.45)])
def test_matches_torchvision(agnostic, conf_thres, iou_thres):
    prediction = random_prediction()
    output = non_max_suppression(prediction, conf_thres, iou_thres, agnostic=agnostic, max_det=10_000)
    assert len(output) == 2
    for image_pred, detections in zip(prediction, output):
        expected = reference_nms(image_pred, conf_thres, iou_thres, agnostic)
        assert detections.shape == expected.shape and detections.shape[1] == 6
        torch.testing.assert_close(detections, expected)
        assert (detections[:-1, 4] >= detections[1:, 4]).all()


def test_class_aware_keeps_overlapping_boxes_of_other_classes_even_off_image():
    # Two identical boxes far left of the image (negative coordinates), different classes.
    row = [-60.0, 10.0, 40.0, 40.0, 1.0]
    prediction = torch.tensor([[row + [0.9, 0.0], row + [0.0, 0.8]]])
    assert len(non_max_suppression(prediction, 0.25, 0.45)[0]) == 2
    assert len(non_max_suppression(prediction, 0.25, 0.45, agnostic=True)[0]) == 1


def test_multi_label_gives_one_row_per_class_above_threshold():
    prediction = torch.tensor([[[50.0, 50.0, 20.0, 20.0, 0.9, 0.8, 0.5, 0.1]]])
    detections = non_max_suppression(prediction, 0.25, 0.45, multi_label=True)[0]
    assert detections[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(detections[:, 4], torch.tensor([0.72, 0.45]))
    torch.testing.assert_close(detections[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    single = non_max_suppression(prediction, 0.25, 0.45)[0]
    assert single[:, 5].tolist() == [0.0]


def test_classes_filter_and_max_det():
    prediction = random_prediction(batch=1, nc=4)
    only = non_max_suppression(prediction, 0.01, 0.6, classes=[1, 3])[0]
    assert len(only) and set(only[:, 5].tolist()) <= {1.0, 3.0}
    capped = non_max_suppression(prediction, 0.01, 0.6, max_det=5)[0]
    full = non_max_suppression(prediction, 0.01, 0.6)[0]
    torch.testing.assert_close(capped, full[:5])


def test_zero_candidates():
    prediction = random_prediction(batch=3)
    prediction[..., 4] = 0.0  # no objectness anywhere
    output = non_max_suppression(prediction, 0.25, 0.45)
    assert [tuple(d.shape) for d in output] == [(0, 6)] * 3
    assert non_max_suppression(torch.zeros(2, 0, 9))[1].shape == (0, 6)
    assert non_max_suppression(random_prediction(batch=1), classes=[])[0].shape == (0, 6)


def test_single_class_model_and_bad_arguments():
    prediction = random_prediction(batch=1, nc=1)
    assert set(non_max_suppression(prediction, 0.1, 0.5)[0][:, 5].tolist()) == {0.0}
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(prediction, conf_thres=1.5)
    with pytest.raises(ValueError, match="5 \\+ nc"):
        non_max_suppression(torch.zeros(10, 5))
