"""yolov5's quad loader (train.py --quad): each 4 images of a training batch become one image of twice the
side, so a batch of B images at size S trains as B / 4 images at 2S. For each 4, with probability 0.5 the
first image is upsampled 2x (the other three are left out), else the four are tiled 2 x 2. Such a batch
holds a quarter of the images the loss is averaged over, so the trainer scales its loss by 4, as yolov5
does; the loader drops a last batch that is not full, as yolov5's does."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# where each of 4 images goes in its 2 x 2 tile, in image sides (x, y): yolov5's layout, the first
# top-left, the second below it, the third right of it, the fourth bottom-right
TILE_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


def combine_quads(
    images: torch.Tensor, targets: torch.Tensor, upsample: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """images: uint8 (B, 3, H, W); targets: (M, 6) [index in batch, class, cx, cy, w, h] normalized;
    upsample: for each 4 images in turn (B // 4 of them), whether its first is upsampled or the four tiled.
    -> (images (B // 4, 3, 2H, 2W), targets (M', 6) indexed by the combined images). Images past the last
    whole 4 are left out, as in yolov5."""
    combined_images, combined_targets = [], []
    for group, upsampled in enumerate(upsample):
        first = 4 * group
        if upsampled:
            image = F.interpolate(
                images[first : first + 1].float(), scale_factor=2.0, mode="bilinear", align_corners=False
            )[0]  # (3, 2H, 2W)
            image = image.round().to(images.dtype)  # rounded; yolov5 truncates
            target = targets[targets[:, 0] == first].clone()  # normalized: the same after upsampling
        else:
            top = torch.cat((images[first], images[first + 2]), 2)  # (3, H, 2W)
            bottom = torch.cat((images[first + 1], images[first + 3]), 2)
            image = torch.cat((top, bottom), 1)  # (3, 2H, 2W)
            pieces = []
            for k, (dx, dy) in enumerate(TILE_OFFSETS):
                piece = targets[targets[:, 0] == first + k].clone()
                piece[:, 2] = (piece[:, 2] + dx) / 2
                piece[:, 3] = (piece[:, 3] + dy) / 2
                piece[:, 4:6] /= 2
                pieces.append(piece)
            target = torch.cat(pieces)
        target[:, 0] = group
        combined_images.append(image)
        combined_targets.append(target)
    return torch.stack(combined_images), torch.cat(combined_targets)


def random_quads(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """combine_quads with each 4 upsampled or tiled at even odds, drawn from torch's generator (a
    DataLoader worker's is seeded from the loader's generator; without workers, the process's)."""
    upsample = (torch.rand(len(images) // 4) < 0.5).tolist()
    return combine_quads(images, targets, upsample)
