"""Deployment as one loop over the formats asked for (utils.deploy.formats), in the registry's order: each
format's writer yields its artefacts one by one under a temporary base name; each is checked against the
PyTorch model there (INT8 also by its mAP when --max-drop bounds it) and only then published under its final
name (utils.deploy.staging), so a refused one is never where val.py, detect.py or serve.py would load it.
convert.py checks its arguments and calls write_formats; Python code can call it.

No step changes the caller's model: the writers convert a float32 CPU copy of it
(utils.deploy.export.export_copy), and the checks compare against the caller's model where it is."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from utils.deploy.backend import load_inference_model
from utils.deploy.export import export_copy, model_metadata
from utils.deploy.formats.base import ExportInputs, Format, OnnxSettings, Written
from utils.deploy.formats.common import quiet_native_output
from utils.deploy.int8.bounded import AccuracyTarget, BoundedResult, accuracy_target, bounded_int8
from utils.deploy.staging import Release, staged_base
from utils.errors import ConversionError

LOGGER = logging.getLogger(__name__)

INT8_NOTE = (
    "  (INT8: deviations this large are expected, 8-bit activations move box coordinates by pixels; "
    "what judges an INT8 model is its mAP, as val.py measures it on that file)"
)


@dataclass
class Int8Plan:
    """What the INT8 models are calibrated on and, with ``max_drop``, the accuracy they must keep: their
    mAP50-95 on the val split of the dataset config ``validation`` within ``max_drop`` points of the FP32
    ONNX graph's (layers are kept float until it holds)."""

    calibration: list[str]  # image files
    validation: dict | None = None
    max_drop: float | None = None


@dataclass
class ExportResult:
    """Each artefact's check ({final path: RuntimeCheck, OnnxCheck or SpecCheck}) and, with --max-drop, each
    INT8 artefact's mAP50-95 against the FP32 ONNX graph's ({final path: BoundedResult})."""

    checks: dict[str, object] = field(default_factory=dict)
    bounded: dict[str, BoundedResult] = field(default_factory=dict)
    int8: bool = False  # an INT8 artefact was written

    def describe(self, checks: bool = True) -> str:
        """The checks (unless ``checks`` is False: printed as they passed), the bounds, the INT8 note."""
        lines = [check.describe() for check in self.checks.values()] if checks else []
        lines += [result.describe() for result in self.bounded.values()]
        return "\n".join(lines + [INT8_NOTE] * self.int8)


def export_inputs(
    model: nn.Module, images: torch.Tensor, base: Path, settings: OnnxSettings, plan: Int8Plan | None
) -> ExportInputs:
    """What the writers get: a float32 CPU copy of the fused ``model`` (export_copy), one of the check
    ``images`` as the example input, and with ``plan`` the calibration images and the --max-drop target."""
    accuracy = None
    if plan is not None and plan.validation is not None:
        validation, img_size, max_drop = plan.validation, int(images.shape[-1]), plan.max_drop

        def accuracy(onnx_path: Path) -> AccuracyTarget:
            return accuracy_target(load_inference_model(onnx_path), validation, img_size, max_drop)

    model = export_copy(model)
    calibration = plan.calibration if plan is not None else None
    return ExportInputs(model, images[:1].cpu(), model_metadata(model), base, settings, calibration, accuracy)


def write_formats(
    model: nn.Module,
    images: torch.Tensor,
    formats: list[Format],
    inputs: ExportInputs,
    release: Release,
    on_published: Callable[[object], None] | None = None,
) -> ExportResult:
    """Write the ``formats`` of the fused ``model`` beside ``inputs.base`` (the fused checkpoint without its
    suffix), check each artefact against ``model`` on ``images`` and publish it once it passed;
    ``on_published(check)`` after each (convert.py prints it)."""
    result = ExportResult()
    for fmt in formats:
        LOGGER.info("Writing %s ...", fmt.title)
        with staged_base(inputs.base) as temporary:
            artefacts = fmt.write(inputs, temporary)
            while (written := next_written(artefacts, fmt.quiet)) is not None:
                final = inputs.base.with_name(
                    inputs.base.name + written.path.name.removeprefix(temporary.name)
                )
                with release.staged(final, written.path):
                    result.checks[str(final)] = fmt.check(model, written, images, final, inputs)
                    bounded_check(fmt, written, final, inputs)
                fmt.published(inputs, written, final)
                if on_published is not None:
                    on_published(result.checks[str(final)])
                if written.bounded is not None:
                    result.bounded[str(final)] = written.bounded
                result.int8 |= written.precision == "int8"
    return result


def next_written(artefacts: Iterator[Written], quiet: bool) -> Written | None:
    """The next artefact a writer yields (None after the last), with what its converters print silenced
    where ``quiet``."""
    with quiet_native_output() if quiet else contextlib.nullcontext():
        return next(artefacts, None)


def bounded_check(fmt: Format, written: Written, final: Path, inputs: ExportInputs) -> None:
    """With --max-drop, an INT8 artefact that no search of its own bounded (LiteRT, ExecuTorch) is scored
    against the FP32 ONNX graph, with the convolutions ONNX Runtime's search kept float also float in it;
    ConversionError when its drop is over the bound."""
    target = inputs.target() if written.precision == "int8" and written.bounded is None else None
    if target is None:
        return
    runtime = fmt.load(written.path, torch.device("cpu"))
    written.bounded = bounded_int8(
        f"{final.name} (against the FP32 ONNX graph)", runtime, target, inputs.kept
    )
    if written.bounded.drop > target.max_drop:
        score, drop = written.bounded.int8_score, written.bounded.drop
        raise ConversionError(
            f"{final} scores mAP50-95 {score:.2f}, {drop:.2f} points under the FP32 ONNX graph's "
            f"{target.reference:.2f} at the same input, over --max-drop {target.max_drop:g} with the "
            "convolutions ONNX Runtime's search kept float also float here; deploy its float artefact or the "
            "ONNX Runtime or OpenVINO INT8 model."
        )
