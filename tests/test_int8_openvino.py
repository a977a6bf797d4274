"""The OpenVINO and INT8 checks (tests/openvino_checks.py) in a pytest process of their own, so that the
native runtimes they load never share a process with the tests that fork."""

from __future__ import annotations

import subprocess
import sys

import pytest

from utils.paths import ROOT

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def test_openvino_and_int8_exports():
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/openvino_checks.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "7 passed" in done.stdout
