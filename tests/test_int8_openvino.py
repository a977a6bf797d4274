"""The OpenVINO and INT8 checks (tests/openvino_checks.py) in a pytest process of their own, so that the
native runtimes they load never share a process with the tests that fork."""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from utils.paths import ROOT

pytest.importorskip("openvino", reason="OpenVINO INT8 needs pip install -r requirements-deploy.txt")
pytest.importorskip("nncf", reason="NNCF INT8 needs pip install -r requirements-deploy.txt")


CHECKS = ROOT / "tests" / "openvino_checks.py"


def test_openvino_and_int8_exports(tmp_path):
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", str(CHECKS)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    tests = [node.name for node in ast.parse(CHECKS.read_text()).body if isinstance(node, ast.FunctionDef)]
    checks = sum(name.startswith("test_") for name in tests)
    assert counts == {"tests": checks, "failures": 0, "errors": 0, "skipped": 0}, counts
