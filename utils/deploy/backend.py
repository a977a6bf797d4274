"""One loader for every kind of weights that val.py, detect.py, serve.py and the hub accept.

``load_inference_model(weights)`` takes a training-form or fused PyTorch checkpoint or any artefact of
convert.py, finds its format by its name (utils.deploy.formats: one module per format) and returns an
``InferenceModel`` (utils.inference): call it on a float tensor (B, 3, H, W), RGB, 0..1, and get the
decoded predictions (B, N, 5 + nc) as a torch tensor (cx, cy, w, h in input pixels, objectness, class
scores), whatever ran underneath.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from utils.deploy.formats import REGISTRY, format_of, loadable
from utils.device import select_device
from utils.errors import WeightsError, WeightsNotFoundError
from utils.inference import InferenceModel
from utils.yolov5_checkpoint import missing_release_message

LOGGER = logging.getLogger(__name__)


def load_inference_model(
    weights: str | Path,
    device: str | torch.device = "cpu",
    threads: int = 0,
    half: bool = False,
    runtime: str | None = None,
) -> InferenceModel:
    """Load a .pt checkpoint (training form or fused) or an artefact of convert.py for inference.

    threads: intra-op threads of the exported runtimes (0: their default); PyTorch uses its global setting.
    half: yolov5's --half: PyTorch weights in float16 on CUDA or bfloat16 on a CPU that computes it
    natively, an OpenVINO IR with bf16 inference precision; DeviceError where the device has no fast half
    precision, WeightsError for a format that runs as exported.
    runtime: the name of the format to run ``weights`` with: one that runs another format's artefacts
    (val.py's --dnn: "opencv_dnn"), or a format's own; None: the format ``weights`` is named as.

    Raises WeightsError (one sentence naming the file and the fix) for anything it cannot load.
    """
    path = Path(weights)
    device = select_device(device)
    if not path.exists():
        raise WeightsNotFoundError(
            missing_release_message(path)
            or f"weights {path} not found; pass an existing .pt checkpoint or an export of convert.py."
        )
    fmt = REGISTRY[runtime] if runtime else format_of(path)
    named_as = REGISTRY[fmt.runs or fmt.name] if fmt else None  # whose artefacts it runs
    if fmt is None or (runtime and not named_as.recognises(path)):
        expected = named_as.shown_as if fmt else loadable()
        raise WeightsError(f"weights {path} are not one of {expected}; pass one of those.")
    if half and not fmt.half:
        halves = " and ".join(f"{other.title}s" for other in REGISTRY.values() if other.half)
        raise WeightsError(
            f"--half runs {halves} in half precision, but {fmt.runtime_label} runs {path} as "
            "exported; drop --half."
        )
    model = fmt.load(path, device, threads, half)
    LOGGER.debug("loaded %s (%s, %d classes, stride %d)", path, model.kind, model.nc, model.stride)
    if model.half:
        LOGGER.info(f"--half: {path} runs in {str(model.half_precision).removeprefix('torch.')}.")
    return model
