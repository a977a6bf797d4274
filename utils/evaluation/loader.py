"""The validation split as val.py reads it, for any InferenceModel: one loader builder that val.py and
the INT8 accuracy control share, so a score computed during quantization is the score val.py prints."""

from __future__ import annotations

from utils.data.dataset import LoaderConfig, create_dataloader
from utils.errors import DataError
from utils.inference import InferenceModel


def validation_loader(
    data_config: dict,
    task: str,
    img_size: int,
    batch_size: int,
    workers: int,
    predictor: InferenceModel,
    single_cls: bool = False,
):
    """yolov5's validation loader: rect batches padded by half a stride, except for the speed task and
    fixed-size graphs (ONNX, OpenVINO), which get plain square letterboxes. single_cls: every label's class
    read as 0 (for a single-class predictor, see utils.inference.SingleClassInference)."""
    split = "val" if task == "speed" else task
    sources = data_config.get(split)
    if not sources:
        raise DataError(
            f"{data_config.get('yaml_file', 'the dataset')} has no '{split}' split; add a '{split}:' entry "
            "or use --task val."
        )
    rect = task != "speed" and predictor.fixed_input_hw is None
    config = LoaderConfig(
        img_size=img_size, batch_size=batch_size, stride=predictor.stride, rect=rect,
        pad=0.5 if rect else 0.0, workers=workers, prefix=f"{split}: ", nc=predictor.nc,
        single_cls=single_cls,
    )  # fmt: skip
    loader, _ = create_dataloader(sources, config)
    return loader
