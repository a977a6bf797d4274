"""Training throughput (images/s) of repyolov5s (RepVGG training form) vs yolov5s on this machine.

    python -m bench.train_throughput [--img 320] [--batch-size 8] [--rounds 3] [--device cpu]

Two measurements per model, interleaved round by round so that load from other processes hits both:
  step:  forward + loss + backward + optimizer step on one fixed random batch (no data loading);
  epoch: one pass over a loader of --epoch-images bundled training images with the training
         augmentation (mosaic etc.), i.e. what an epoch of train.py costs per image, without validation.
Prints the median over rounds and the repyolov5s / yolov5s ratio (the training cost of the extra branches).

If the ``yolov5`` pip package happens to be importable (it is not a dependency of this project), its
yolov5s model and loss are timed on the same fixed batch too ("step" only), and our yolov5s / theirs
is printed: the check that our training step is not slower than yolov5's on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from models.yolo import Model
from utils.dataset import create_dataloader, image_files_from_sources, load_data_config
from utils.device import select_device, time_sync
from utils.hyp import load_hyp
from utils.loss import YoloLoss
from utils.optim import build_optimizer
from utils.trainer import scale_loss_gains

MODELS = ("repyolov5s.yaml", "yolov5s.yaml")


def random_targets(batch_size: int, nc: int, per_image: int = 4, seed: int = 0) -> torch.Tensor:
    """Tensor[B * per_image, 6] (image, class, cx, cy, w, h) normalized, boxes 5-40% of the image."""
    generator = torch.Generator().manual_seed(seed)
    count = batch_size * per_image
    image = torch.arange(batch_size).repeat_interleave(per_image).float()
    classes = torch.randint(0, nc, (count,), generator=generator).float()
    wh = torch.rand(count, 2, generator=generator) * 0.35 + 0.05
    xy = wh / 2 + torch.rand(count, 2, generator=generator) * (1 - wh)
    return torch.cat([image[:, None], classes[:, None], xy, wh], dim=1)


def train_step(model, loss_fn, optimizer, images: torch.Tensor, targets: torch.Tensor) -> None:
    loss, _ = loss_fn(model(images), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure_steps(model, loss_fn, optimizer, batch_size: int, img_size: int, steps: int, device) -> float:
    images = torch.rand(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(
        device
    )
    targets = random_targets(batch_size, model.nc).to(device)
    train_step(model, loss_fn, optimizer, images, targets)  # warm-up
    start = time_sync()
    for _ in range(steps):
        train_step(model, loss_fn, optimizer, images, targets)
    return steps * batch_size / (time_sync() - start)


def measure_epoch(model, loss_fn, optimizer, loader, device) -> float:
    seen = 0
    start = time_sync()
    for images, targets, _, _ in loader:
        images = images.to(device).float() / 255
        train_step(model, loss_fn, optimizer, images, targets.to(device))
        seen += len(images)
    return seen / (time_sync() - start)


def build(cfg: str, nc: int, img_size: int, device):
    model = Model(cfg, nc=nc).to(device).train()
    hyp = scale_loss_gains(load_hyp("hyp.scratch-low.yaml"), model.detect.nl, nc, img_size)
    return model, YoloLoss(model.detect, hyp), build_optimizer(model, "SGD", lr=0.001)


def build_reference_yolov5(nc: int, img_size: int, device):
    """(model, loss, optimizer) of the installed `yolov5` package's yolov5s, or None when it is absent."""
    try:
        import yolov5
        from yolov5.models.yolo import Model as ReferenceModel
        from yolov5.utils.loss import ComputeLoss
    except ImportError:
        return None
    cfg = Path(yolov5.__file__).parent / "models" / "yolov5s.yaml"
    model = ReferenceModel(str(cfg), ch=3, nc=nc).to(device).train()
    model.nc = nc
    model.hyp = scale_loss_gains(load_hyp("hyp.scratch-low.yaml"), model.model[-1].nl, nc, img_size).to_dict()
    loss = ComputeLoss(model)
    return (
        model,
        lambda predictions, targets: loss(predictions, targets),
        build_optimizer(model, "SGD", lr=0.001),
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--img", dest="img_size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per round")
    parser.add_argument("--epoch-images", type=int, default=48, help="images in the timed 'epoch'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(img_size=320, batch_size=8, steps=5, epoch_images=48, rounds=3, workers=2, device="cpu") -> dict:
    device = select_device(device)
    data = load_data_config(None)
    hyp = load_hyp("hyp.scratch-low.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.txt"
        subset.write_text("\n".join(image_files_from_sources(data["train"])[:epoch_images]) + "\n")
        loader, _ = create_dataloader(
            str(subset),
            img_size,
            batch_size,
            32,
            hyp,
            augment=True,
            workers=workers,
            shuffle=True,
            nc=data["nc"],
        )
        built = {cfg: build(cfg, data["nc"], img_size, device) for cfg in MODELS}
        results = {cfg: {"step": [], "epoch": []} for cfg in MODELS}
        reference = build_reference_yolov5(data["nc"], img_size, device)
        reference_steps = []
        for round_index in range(rounds):
            for cfg, (model, loss_fn, optimizer) in built.items():
                results[cfg]["step"].append(
                    measure_steps(model, loss_fn, optimizer, batch_size, img_size, steps, device)
                )
                results[cfg]["epoch"].append(measure_epoch(model, loss_fn, optimizer, loader, device))
                print(
                    f"round {round_index + 1}/{rounds} {cfg:18s} step {results[cfg]['step'][-1]:6.2f} img/s, "
                    f"epoch {results[cfg]['epoch'][-1]:6.2f} img/s",
                    flush=True,
                )
            if reference is not None:
                reference_steps.append(measure_steps(*reference, batch_size, img_size, steps, device))
                label = "yolov5 (package)"
                print(f"round {round_index + 1}/{rounds} {label:18s} step {reference_steps[-1]:6.2f} img/s")
    medians = {cfg: {k: statistics.median(v) for k, v in r.items()} for cfg, r in results.items()}
    rep, plain = medians[MODELS[0]], medians[MODELS[1]]
    print(
        f"\nTraining throughput at {img_size} px, batch {batch_size}, {device} "
        f"({torch.get_num_threads()} threads), median of {rounds} interleaved rounds:"
    )
    print(f"{'model':20s}{'step img/s':>12s}{'epoch img/s':>13s}")
    for cfg in MODELS:
        print(f"{cfg:20s}{medians[cfg]['step']:12.2f}{medians[cfg]['epoch']:13.2f}")
    print(
        f"{'ratio rep/plain':20s}{rep['step'] / plain['step']:12.2f}{rep['epoch'] / plain['epoch']:13.2f}"
        "   (below 1: the RepVGG training form is slower)"
    )
    if reference_steps:
        theirs = statistics.median(reference_steps)
        print(f"{'yolov5 package':20s}{theirs:12.2f}")
        print(
            f"{'ours/yolov5 (v5s)':20s}{plain['step'] / theirs:12.2f}   (1 or above: not slower than yolov5)"
        )
        medians["yolov5_package"] = {"step": theirs}
    else:
        print("(the yolov5 pip package is not installed: no side-by-side with yolov5's own training step)")
    return medians


def main(argv=None) -> dict:
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
