"""Functions stay small: in models/, utils/ and the scripts none takes more than 8 parameters (an
options object counts as one; self and cls do not count, *args and **kwargs count one each) and none is
longer than 60 lines. Block constructors mirror a YAML row's arguments and are exempt from the count. No
module of utils/deploy/ is longer than 300 lines.

    python -m tests.test_code_shape      # prints every function over either limit, exempt ones included
"""

from __future__ import annotations

import ast
from pathlib import Path

from utils.paths import ROOT

MAX_PARAMETERS = 8
MAX_LINES = 60
MAX_DEPLOY_MODULE_LINES = 300  # utils/deploy/: one topic per module, one format per module
SCRIPTS = ("train.py", "val.py", "detect.py", "convert.py", "serve.py")


def checked_files() -> list[Path]:
    library = [path for folder in ("models", "utils") for path in sorted((ROOT / folder).rglob("*.py"))]
    return library + [ROOT / script for script in SCRIPTS]


def mirrors_a_yaml_row(path: Path, name: str) -> bool:
    """A block's constructor: its arguments are the columns of a model YAML row."""
    return name == "__init__" and path.parent == ROOT / "models" / "blocks"


def oversized() -> list[tuple[str, int, int, bool]]:
    """[(path:line name, parameters, lines, exempt)] of every function over a limit."""
    found = []
    for path in checked_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            arguments = node.args
            named = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
            parameters = len([name for name in named if name not in ("self", "cls")])
            parameters += (arguments.vararg is not None) + (arguments.kwarg is not None)
            lines = node.end_lineno - node.lineno + 1
            if parameters > MAX_PARAMETERS or lines > MAX_LINES:
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                found.append((where, parameters, lines, mirrors_a_yaml_row(path, node.name)))
    return found


def test_no_function_takes_more_than_8_parameters_or_60_lines():
    offenders = [f"{where} ({parameters} parameters, {lines} lines)"
                 for where, parameters, lines, exempt in oversized() if not exempt]  # fmt: skip
    assert not offenders, "split these functions or group their parameters: " + "; ".join(offenders)


def test_no_deploy_module_is_over_300_lines():
    modules = sorted((ROOT / "utils" / "deploy").rglob("*.py"))
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in modules
        if (n := len(p.read_text().splitlines())) > MAX_DEPLOY_MODULE_LINES
    ]
    assert not long, "split these modules: " + "; ".join(long)


if __name__ == "__main__":
    for where, parameters, lines, exempt in oversized():
        note = " (block constructor, exempt)" if exempt else ""
        print(f"{where}: {parameters} parameters, {lines} lines{note}")
