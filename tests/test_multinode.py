"""Two "nodes" on 127.0.0.1: the README's multi-node torchrun line launched twice (c10d rendezvous, one
process each, gloo), one tiny epoch. Both ranks see disjoint batches, and the result equals one process
trained with the same global batch; an error in one rank ends both launchers, naming that rank.

The training images are copies of one image (with its labels) and augmentation is off: on the CPU each
rank normalizes its BatchNorm layers over its own half batch (SyncBatchNorm needs CUDA), so only when every
half batch has the statistics of the whole can the two runs be equal. What the equality checks is the rest:
the batch split, the loss scale and gradient averaging across ranks, the schedule and the EMA."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import make_tiny_dataset
from utils.paths import ROOT

TIMEOUT_S = 240
NO_AUGMENTATION = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, mosaic=0.0)


def readme_multinode_line() -> list[str]:
    """The README's multi-node command (the line that starts torchrun --nnodes), as argv."""
    lines = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("torchrun --nnodes")
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("  #")[0])


def node_command(port: int, tiny_flags: list[str]) -> list[str]:
    """The README line on this machine: HOST is 127.0.0.1 and the port a free one; train.py runs through
    tests/multinode_probe.py (which records each rank's batches, then runs train.py's main); the tiny
    run's flags follow the README's, and argparse keeps the last of each."""
    argv = readme_multinode_line()
    assert argv[0] == "torchrun" and "train.py" in argv
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--rdzv-backend") + 1] == "c10d"
    endpoint = argv.index("--rdzv-endpoint") + 1
    assert argv[endpoint] == "HOST:29500"
    argv[endpoint] = f"127.0.0.1:{port}"
    argv[argv.index("train.py")] = "tests/multinode_probe.py"
    return [sys.executable, "-m", "torch.distributed.run", *argv[1:], *tiny_flags]


@pytest.fixture(scope="module")
def copies_dataset(tmp_path_factory):
    """8 training images that are one image (and its labels) copied, 4 validation images; a hyp file with
    augmentation off. -> (data yaml, model yaml, hyp yaml)."""
    root = tmp_path_factory.mktemp("multinode")
    data_yaml, model_yaml = make_tiny_dataset(root)
    images, labels = root / "shapes" / "images" / "train", root / "shapes" / "labels" / "train"
    first = sorted(images.glob("*.jpg"))[0]
    for path in sorted(images.glob("*.jpg"))[1:]:
        shutil.copyfile(first, path)
        shutil.copyfile(labels / f"{first.stem}.txt", labels / f"{path.stem}.txt")
    for cache in (root / "shapes" / "labels").glob("*.cache*"):
        cache.unlink()
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.shapes.yaml").read_text())
    hyp_yaml = root / "hyp.yaml"
    hyp_yaml.write_text(yaml.safe_dump({**hyp, **NO_AUGMENTATION}))
    return data_yaml, model_yaml, hyp_yaml


def tiny_flags(data_yaml, model_yaml, hyp_yaml, project: Path) -> list[str]:
    return [
        "--cfg", str(model_yaml), "--data", str(data_yaml), "--hyp", str(hyp_yaml), "--epochs", "1",
        "--img", "64", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--repeat", "1",
        "--noautoanchor", "--no-amp", "--noplots", "--no-tensorboard", "--project", str(project),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_nodes(flags: list[str], probe_dir: Path, extra_env: dict | None = None) -> list:
    """Both launchers of the README line at once; -> their CompletedProcess-like (returncode, output)."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MULTINODE_PROBE_DIR=str(probe_dir))
    env.update(extra_env or {})
    command = node_command(free_port(), flags)
    nodes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    results = []
    for node in nodes:
        try:
            output, _ = node.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        results.append((node.returncode, output))
    return results


def test_readme_two_node_line_trains_as_one_process_with_the_same_global_batch(copies_dataset, tmp_path):
    results = launch_two_nodes(tiny_flags(*copies_dataset, tmp_path / "nodes"), tmp_path / "probe")
    for returncode, output in results:
        assert returncode == 0, output[-4000:]
    run_dirs = list((tmp_path / "nodes").iterdir())
    assert len(run_dirs) == 1  # one run folder: rank 0 writes, on whichever node it is
    batches = {rank: json.loads((tmp_path / "probe" / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    seen = [{name for batch in batches[rank] for name in batch} for rank in (0, 1)]
    assert [len(batches[rank]) for rank in (0, 1)] == [2, 2]  # 8 images, 2 per rank and batch
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8  # disjoint, and every image once

    # the one-process run in its own process too, as train.py runs it (nothing of this test process's state)
    single = subprocess.run(
        [sys.executable, "train.py", *tiny_flags(*copies_dataset, tmp_path / "single")], cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    two_nodes = torch.load(run_dirs[0] / "weights" / "last.pt", weights_only=True)["model"]
    (single_dir,) = (tmp_path / "single").iterdir()
    one_process = torch.load(single_dir / "weights" / "last.pt", weights_only=True)["model"]
    assert two_nodes.keys() == one_process.keys()
    for name, value in one_process.items():
        if not value.is_floating_point():
            continue
        # BatchNorm's running variance is the batch's times n / (n - 1), n the values one process
        # normalizes over: half as many on each of two processes, so it differs by under 1% here. The weights
        # differ by float rounding (sums in another order), up to about 2e-5 after the epoch's steps
        tolerance = dict(rtol=1e-2, atol=1e-5) if name.endswith("running_var") else dict(rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(two_nodes[name], value, **tolerance, msg=lambda text: f"{name}: {text}")


def test_an_error_in_one_rank_ends_both_nodes_naming_the_rank(copies_dataset, tmp_path):
    flags = tiny_flags(*copies_dataset, tmp_path / "nodes")
    results = launch_two_nodes(flags, tmp_path / "probe", {"MULTINODE_PROBE_FAIL_RANK": "1"})
    assert all(returncode != 0 for returncode, _ in results)
    output = "\n".join(output for _, output in results)
    assert "the probe's planted error in rank 1" in output
    assert re.search(r"rank\s*: 1 \(local_rank: 0\)", output)  # torchrun's summary on rank 1's node
    assert "Connection closed by peer" in output  # rank 0, on the other node, stopped at its next step


def test_a_one_process_checkpoint_resumes_on_two_nodes(copies_dataset, tmp_path):
    import train

    data_yaml, model_yaml, hyp_yaml = copies_dataset
    first = train.run(
        cfg=str(model_yaml), data=str(data_yaml), hyp=str(hyp_yaml), epochs=2, img_size=64, batch_size=4,
        device="cpu", workers=0, repeat=1, noautoanchor=True, plots=False, tensorboard=False,
        project=str(tmp_path / "runs"), stop_after_epochs=1,
    )  # fmt: skip
    assert not first["finished"]
    flags = [*tiny_flags(*copies_dataset, tmp_path / "unused"), "--resume", str(first["last"])]
    for returncode, output in launch_two_nodes(flags, tmp_path / "probe"):
        assert returncode == 0, output[-4000:]
    with open(first["save_dir"] / "results.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert json.loads((tmp_path / "probe" / "rank1.json").read_text())  # the second node trained epoch 2
    assert torch.load(first["last"], weights_only=True)["epoch"] == -1  # finished
