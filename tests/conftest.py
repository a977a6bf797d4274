"""Fixtures shared by the test modules; one name means one thing. Heavy modules are imported inside the
fixtures, so collecting the tests (and tests/openvino_checks.py's own pytest process) loads nothing here.

Scopes: a fixture that trains or exports is session-scoped, built once. A fixture that only writes a
tiny checkpoint or dataset stays module-scoped, as it was in the modules it came from: the checkpoints
seed torch's global generator (torch.manual_seed(0)) when built, so each module that asks for one starts
from the same generator state whatever ran before it.
"""

from __future__ import annotations

import pytest

# --- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """best.pt of tests.helpers.tiny_model(): repyolov5n at 1/8 width, seed 0, classes helpers.NAMES,
    random BN statistics, objectness biased up so it finds boxes. For detect, Detector, hubconf, --half."""
    from tests.helpers import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt")


@pytest.fixture(scope="module")
def serve_detector(weights):
    """A Detector of ``weights`` on the CPU at 96 px and conf 0.1, where the tiny model finds boxes: what
    the service's tests (test_serve.py, test_serve_fuzz.py) serve."""
    from utils.deploy.detector import Detector

    detector = Detector(weights, device="cpu")
    detector.size, detector.conf = 96, 0.1
    return detector


@pytest.fixture(scope="module")
def two_class_yolov5n_weights(tmp_path_factory):
    """tiny.pt of an untrained yolov5n as models/yolov5n.yaml defines it (seed 0), classes
    helpers.BOX_BAR_NAMES: those of test_val.py's hand-made dataset."""
    import torch

    from models.yolo import Model
    from tests.helpers import BOX_BAR_NAMES
    from utils.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=len(BOX_BAR_NAMES))
    model.names = list(BOX_BAR_NAMES)
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("weights") / "tiny.pt")


# --- datasets -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_study_dataset(tmp_path_factory):
    """(root, data yaml, model yaml): helpers.make_tiny_dataset with its defaults (8 train, 4 val images)
    for the seeded runs of test_accuracy_bench.py; sets torch to one intra-op thread."""
    import torch

    from tests.helpers import make_tiny_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("accuracy")
    data_yaml, model_yaml = make_tiny_dataset(root)
    return root, data_yaml, model_yaml


@pytest.fixture(scope="module")
def tiny_dataset_and_bad_checkpoints(tmp_path_factory):
    """(root, data yaml, model yaml, corrupt.pt, foreign.pt): a tiny dataset (4 train, 2 val images), a
    file that is not a checkpoint, and a torch file without a checkpoint's keys, for test_errors.py."""
    import torch

    from tests.helpers import make_tiny_dataset

    root = tmp_path_factory.mktemp("errors")
    data_yaml, model_yaml = make_tiny_dataset(root, train_images=4, val_images=2)
    corrupt = root / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    foreign = root / "foreign.pt"
    torch.save({"epoch": 3, "weights": {"w": torch.zeros(1)}}, foreign)
    return root, data_yaml, model_yaml, corrupt, foreign


# --- exports --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_onnx_export(tmp_path_factory):
    """(best_fused.onnx, calibration image files, probe batches): the tiny checkpoint (seed 0) whose
    training split is 4 images of 64x64, fused and exported to ONNX at 64 px by convert.run in this
    process (ONNX Runtime only: the OpenVINO export is tests/openvino_checks.py's `exported`)."""
    import torch

    import convert
    from tests.helpers import write_images, write_tiny_checkpoint
    from utils.deploy.int8.calibration import calibration_batches

    root = tmp_path_factory.mktemp("partial")
    images = write_images(root / "images", count=4, size=(64, 64))
    checkpoint = write_tiny_checkpoint(root / "best.pt", data={"train": [str(root / "images")]})
    convert.run(checkpoint, img_size=64, runs=1, onnx=True)
    files = [str(path) for path in images]
    batches = [torch.from_numpy(batch) for batch in calibration_batches(files, 64)]
    return root / "best_fused.onnx", files, batches
