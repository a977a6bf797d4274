"""The README's Python API lines, and its torch.hub line run on hubconf.py from a temporary copy of the
repository in a fresh interpreter with the network refused."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.paths import ROOT

README_WEIGHTS = "runs/train/exp/weights/best.pt"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_api_runs(weights, monkeypatch, capsys):
    block = next(b for b in readme_python_blocks() if "Detector(" in b)
    assert len([line for line in block.splitlines() if line.strip()]) == 5
    monkeypatch.chdir(ROOT)  # the README names data/images/ from the repository root
    namespace: dict = {}
    exec(block.replace(README_WEIGHTS, str(weights)), namespace)
    out = capsys.readouterr().out
    assert "image 1/2 data/images/shapes0.jpg: " in out and "image 2/2" in out and "Speed:" in out
    assert namespace["boxes"].shape[1] == 6


def copy_repository(destination: Path) -> Path:
    """The files git tracks (and untracked ones it does not ignore), as they are in the working tree."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of the repository's files")
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


HUB_SCRIPT = """
import socket, sys

def refuse(*args, **kwargs):
    raise OSError("the test refuses network access")

socket.socket.connect = socket.create_connection = refuse
import torch

repo, image = sys.argv[1], sys.argv[2]
{hub_line}
results = model(image, size=64, conf=0.1)
print("custom", type(model).__name__, len(results.xyxy[0]), results.names)
untrained = torch.hub.load(repo, "repyolov5n", classes=3, source="local")
print("repyolov5n", type(untrained).__name__, untrained.names, len(untrained(image, size=64)))
bare = torch.hub.load(repo, "yolov5s", classes=2, autoshape=False, source="local")
print("yolov5s", type(bare).__name__, bare.nc)
print("utils", sys.modules["utils"].__file__)
"""


def test_readme_torch_hub_line_loads_from_a_copy_offline(weights, tmp_path):
    clone = copy_repository(tmp_path / "RepYOLO")
    hub_line = next(
        line for b in readme_python_blocks() for line in b.splitlines() if "torch.hub.load" in line
    )
    hub_line = hub_line.replace('"path/to/RepYOLO"', "repo").replace(README_WEIGHTS, str(weights))
    torch_home = tmp_path / "torch_home"
    outside = tmp_path / "elsewhere"  # not the repository: only torch.hub can make its packages importable
    outside.mkdir()
    script = HUB_SCRIPT.format(hub_line=hub_line)
    image = clone / "data" / "images" / "shapes0.jpg"
    completed = subprocess.run(
        [sys.executable, "-I", "-c", script, str(clone), str(image)],  # -I: no PYTHONPATH, no cwd on sys.path
        capture_output=True,
        text=True,
        cwd=outside,
        env=dict(os.environ, TORCH_HOME=str(torch_home)),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    lines = dict(line.split(" ", 1) for line in completed.stdout.splitlines())
    assert lines["custom"].startswith("Detector ") and lines["custom"].endswith(
        "['circle', 'square', 'triangle']"
    )
    assert int(lines["custom"].split()[1]) > 0
    assert lines["repyolov5n"].startswith("Detector ['class0', 'class1', 'class2'] 1")
    assert lines["yolov5s"] == "Model 2"
    assert lines["utils"].startswith(str(clone))  # the copy's packages, not this checkout's
    assert not torch_home.exists() or not any(torch_home.rglob("*.pt"))  # nothing downloaded
