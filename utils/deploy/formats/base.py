"""What a deployment format is: one ``Format`` object per module of this package, declaring its flags and
title, the packages it needs and the requirements file that has them, its artefacts' names and how to
recognise one, how it writes them (``write``), loads one (``load``, to an InferenceModel) and checks one
against the PyTorch model (``check``, with its tolerance). utils.deploy.pipeline writes, checks and
publishes what ``write`` yields; utils.deploy.backend loads through ``load``.

Every artefact takes the float input (B, 3, H, W) RGB 0..1 and gives the decoded (B, N, 5 + nc) output,
as the model in eval mode, and carries the metadata a loader needs (utils.deploy.metadata).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from utils.deploy.graph import module_of_onnx_node
from utils.deploy.int8.bounded import AccuracyTarget, BoundedResult
from utils.deploy.int8.calibration import calibration_batches
from utils.deploy.metadata import check_metadata
from utils.deploy.verify import MAX_RELATIVE_ERROR, compare_with_model
from utils.errors import UserError, WeightsError
from utils.inference import InferenceModel

LOGGER = logging.getLogger(__name__)

BASE_REQUIREMENTS = "requirements.txt"
DEPLOY_REQUIREMENTS = "requirements-deploy.txt"
EDGE_REQUIREMENTS = "requirements-edge.txt"

# float16 weights round each weight to 11 significant bits, which moves the outputs by up to 2e-3 of the
# largest one on our models (the plain ReLU repyolov5s at 320); a broken conversion is far above this
MAX_FLOAT16_RELATIVE_ERROR = 1e-2


@dataclass(frozen=True)
class Artefact:
    """One file or folder a format writes, named by what follows the base name (the fused checkpoint
    without its suffix: runs/.../best_fused), and the precision it computes in."""

    suffix: str  # what follows the base name: a file suffix, or the end of a folder's name
    precision: str = "float32"  # "float32", "float16" (float16 weights) or "int8" (written with --int8)

    def path(self, base: Path) -> Path:
        return base.with_name(base.name + self.suffix)


@dataclass
class OnnxSettings:
    """How the ONNX graph is exported and timed."""

    opset: int = 17
    dynamic: bool = False  # free batch, height and width; else exactly (1, 3, H, W)
    runs: int = 10  # timed calls per runtime for the latency row
    threads: int = 0  # CPU threads while timing (0: each runtime's default)


@dataclass
class Written:
    """An artefact just written under a temporary name; ``bounded``: what a --max-drop search made of it."""

    path: Path
    precision: str
    bounded: BoundedResult | None = None


@dataclass
class ExportInputs:
    """What every writer gets and what a conversion learns as it goes.

    model: a float32 CPU copy of the fused model in eval mode (utils.deploy.export.export_copy), which the
    writers trace, export and quantize. example: one image (1, 3, H, W). metadata: what a loader needs
    (utils.deploy.export.model_metadata). base: the final base name (the writers name the files inside a
    folder after it). calibration: the INT8 calibration images (None: no INT8 artefact). accuracy: builds
    the --max-drop target, once, when an INT8 writer first asks (target). onnx_path: the FP32 ONNX graph
    once published (OpenVINO and MNN convert it; the target scores it). kept: the convolutions ONNX
    Runtime's --max-drop search kept float (ONNX node names), which the later INT8 writers keep float too.
    """

    model: nn.Module
    example: torch.Tensor
    metadata: dict
    base: Path
    settings: OnnxSettings = field(default_factory=OnnxSettings)
    calibration: list[str] | None = None
    accuracy: Callable[[Path], AccuracyTarget] | None = None
    onnx_path: Path | None = None
    kept: list[str] = field(default_factory=list)
    _target: AccuracyTarget | None = field(default=None, repr=False)

    @property
    def static_metadata(self) -> dict:
        """The metadata of an export with a fixed (1, 3, H, W) input."""
        return self.metadata | {"dynamic": False, "img_size": list(self.example.shape[-2:])}

    @property
    def img_size(self) -> int:
        return int(self.example.shape[-1])

    @property
    def float_modules(self) -> tuple[str, ...]:
        """The module paths (e.g. "model.4.conv") of the convolutions ``kept`` float."""
        return tuple(module_of_onnx_node(name) for name in self.kept)

    def calibration_images(self) -> Iterator[torch.Tensor]:
        return (torch.from_numpy(batch) for batch in calibration_batches(self.calibration, self.img_size))

    def target(self) -> AccuracyTarget | None:
        """The --max-drop target against the published FP32 ONNX graph (None without --max-drop)."""
        if self._target is None and self.accuracy is not None:
            self._target = self.accuracy(self.onnx_path)
        return self._target


class Format:
    """One deployment format. Subclasses set the class attributes and override what their format does."""

    name = ""  # the registry key, the module's name and InferenceModel.kind
    title = ""  # in sentences: "ONNX", "OpenVINO IR"
    runtime_title = ""  # the runtime in the benchmark tables: "ONNX Runtime" (default: the title)
    flag: str | None = None  # convert.py's flag that writes it (None: convert.py writes it anyway / never)
    help = ""  # that flag's --help
    runtime_flag: str | None = None  # a flag of val.py and detect.py that runs another format's artefacts
    runs: str | None = None  # that format's name
    packages: tuple[tuple[str, str], ...] = ()  # (pip name, import name) of each converter and runtime
    requirements = BASE_REQUIREMENTS
    artefacts: tuple[Artefact, ...] = ()
    shown_as = ""  # how the artefacts are named, in the list of what --weights takes (loadable)
    reads_onnx = False  # converted from the published ONNX graph (convert.py then writes that too)
    half = False  # runs in half precision with --half
    any_folder = False  # an unrecognised folder is taken for this format's (its loader says what is missing)
    quiet = True  # silence what its converters print natively while it writes (quiet_native_output)

    def __repr__(self) -> str:
        return f"<format {self.name}>"

    @property
    def runtime_label(self) -> str:
        """What runs the artefacts, in the benchmark tables and sentences: "ONNX Runtime", "NCNN"."""
        return self.runtime_title or self.title

    # --- names ---

    def artefact_paths(self, base: Path, int8: bool = False) -> dict[Path, str]:
        """{path: what it is in words} of each artefact written from ``base``, the INT8 ones with ``int8``."""
        return {artefact.path(base): self.describe(artefact)
                for artefact in self.artefacts if int8 or artefact.precision != "int8"}  # fmt: skip

    def describe(self, artefact: Artefact) -> str:
        return f"INT8 {self.title}" if artefact.precision == "int8" else self.title

    def recognises(self, path: Path) -> bool:
        """Whether ``path`` is named as this format's artefacts are (by its file suffix)."""
        suffixes = {Path(f"x{artefact.suffix}").suffix for artefact in self.artefacts} - {""}
        return path.suffix.lower() in suffixes

    # --- packages ---

    def missing(self) -> list[str]:
        """The pip names of the packages this format needs that are not installed."""
        return [pip for pip, module in self.packages if importlib.util.find_spec(module) is None]

    def require(self, needed_by: str, error: type[UserError], fix: str = "") -> None:
        """Raises ``error`` (one sentence: ``needed_by`` needs ..., which is not installed; pip install -r
        the requirements file``fix``.) when a package this format needs is not installed."""
        missing = self.missing()
        if missing:
            raise error(
                f"{needed_by} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                f"installed; pip install -r {self.requirements}{fix}."
            )

    def unavailable(self) -> str | None:
        """Why this machine cannot run the format's artefacts, or None."""
        return None

    # --- writing, loading, checking ---

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        """Write the artefacts under the temporary base ``staged`` (each yielded is checked and published
        before the next is written)."""
        raise NotImplementedError(f"{self.title} is not written by convert.py")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        raise NotImplementedError

    def tolerance(self, precision: str) -> float | None:
        """The relative error against PyTorch above which an artefact is refused; None for INT8, whose
        deviation is the quantization's and is judged by its mAP."""
        return {"float32": MAX_RELATIVE_ERROR, "float16": MAX_FLOAT16_RELATIVE_ERROR}.get(precision)

    def check(
        self, model: nn.Module, written: Written, images: torch.Tensor, final: Path, inputs: ExportInputs
    ):
        """The artefact ``written`` (under its temporary name; ``final``: its final path) run beside ``model``
        on ``images`` (utils.deploy.verify.RuntimeCheck); ConversionError over the tolerance."""
        runtime = self.load(written.path, torch.device("cpu"))
        return compare_with_model(model, runtime, images, self.tolerance(written.precision), final)

    def published(self, inputs: ExportInputs, written: Written, final: Path) -> None:
        """What the conversion learns once ``written`` is published as ``final`` (the ONNX graph's path)."""

    # --- refusals ---

    def corrupt(self, path: Path) -> WeightsError:
        return WeightsError(
            f"{path} is corrupt or is no {self.title} model; re-export it with convert.py --{self.flag}."
        )

    @contextlib.contextmanager
    def refusing(self, path: Path, errors: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
        """Within: what a runtime raises on a broken or foreign file (``errors``) becomes ``corrupt(path)``,
        one sentence; the runtime's own message goes to the debug log."""
        try:
            yield
        except errors as error:
            LOGGER.debug("%s could not load %s: %s", self.runtime_label, path, error)
            raise self.corrupt(path) from None

    def exported_metadata(self, path: Path, metadata: Any) -> tuple[dict, list[int]]:
        """The metadata read from an artefact (None: none) once it is RepYOLO's, with class names, stride and
        input size of their types (check_metadata), and the (1, 3, H, W) input it was written for;
        WeightsError (one sentence naming the file) otherwise."""
        if not metadata:
            raise WeightsError(
                f"{path} carries no RepYOLO metadata (class names, stride, input size), so it was not "
                f"exported by RepYOLO; export the checkpoint with convert.py --{self.flag}."
            )
        metadata = check_metadata(path, metadata, f"--{self.flag}", ("names", "stride", "img_size"))
        return metadata, [1, 3, *metadata["img_size"]]
