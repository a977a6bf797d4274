"""The layering of the library: imports only point down.

scripts (train, val, detect, convert) -> utils.train -> utils.deploy -> utils.evaluation, utils.data
-> utils leaves (boxes, nms, checkpoint, ...) -> models. A module may import its own package, its leaves
and anything lower; nothing under models/ or utils/ imports a script, bench/ or tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.paths import ROOT

SCRIPTS = {"train", "val", "detect", "convert", "hubconf"}
LAYERS = {  # lower imports nothing higher
    "models": 0,
    "utils": 1,  # the shared leaves directly under utils/
    "utils.data": 2,
    "utils.evaluation": 2,
    "utils.deploy": 3,
    "utils.train": 4,
}


def library_modules() -> list[Path]:
    return sorted(p for folder in ("models", "utils") for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The LAYERS key a project module belongs to (its longest matching prefix), None for third-party."""
    parts = module.split(".")
    if parts[0] not in ("models", "utils"):
        return None
    if parts[0] == "utils" and len(parts) > 1 and f"utils.{parts[1]}" in LAYERS:
        return f"utils.{parts[1]}"
    return parts[0]


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, function-level imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_imports_point_down(path: Path):
    source = module_name(path)
    source_layer = layer_of(source)
    for imported in imported_modules(path):
        top = imported.split(".")[0]
        assert top not in SCRIPTS | {"bench", "tests"}, (
            f"{source} imports the script or test module {imported}"
        )
        target_layer = layer_of(imported)
        if target_layer is None or target_layer == source_layer:
            continue
        assert LAYERS[target_layer] < LAYERS[source_layer], (
            f"{source} ({source_layer}) imports {imported} ({target_layer}), which is not below it"
        )


def test_the_scan_sees_the_packages():
    layers = {layer_of(module_name(path)) for path in library_modules()}
    assert layers == set(LAYERS)
