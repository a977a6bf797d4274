"""The layering of the library: imports only point down, and no module imports itself round a cycle.

scripts (train, val, detect, convert, serve) -> utils.train and utils.serve -> utils.deploy ->
utils.evaluation -> utils.data -> utils leaves (boxes, nms, checkpoint, inference, ...) -> models. A module
may import its own package, its leaves and anything lower; nothing under models/ or utils/ imports a
script, bench/ or tests/. Within a layer too, the imports form no cycle (function-level imports count:
they hide a cycle, they do not break it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.paths import ROOT

SCRIPTS = {"train", "val", "detect", "convert", "serve", "hubconf"}
LAYERS = {  # lower imports nothing higher
    "models": 0,
    "utils": 1,  # the shared leaves directly under utils/
    "utils.data": 2,
    "utils.evaluation": 3,  # its validation loader builds on utils.data
    "utils.deploy": 4,
    "utils.train": 5,
    "utils.serve": 5,  # beside the trainer: neither imports the other
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


def import_graph() -> dict[str, set[str]]:
    """{library module: the library modules it imports} (``from package import name`` counts as importing
    the package, and the module package.name when there is one)."""
    paths = {module_name(path): path for path in library_modules()}
    return {
        module: {name for name in imported_modules(path) if name in paths and name != module}
        for module, path in paths.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None: a depth-first search that meets a module
    still on its path."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in path:
                return path[path.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


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


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_within_a_layer():
    graph = {
        "utils.deploy.export": {"utils.deploy.metadata"},
        "utils.deploy.backend": {"utils.deploy.export", "utils.inference"},
        "utils.deploy.metadata": {"utils.deploy.backend"},  # the deliberate cycle
        "utils.inference": set(),
    }
    assert find_cycle(graph) == [
        "utils.deploy.backend", "utils.deploy.export", "utils.deploy.metadata", "utils.deploy.backend"
    ]  # fmt: skip
    graph["utils.deploy.metadata"] = set()
    assert find_cycle(graph) is None


def test_a_function_level_import_closes_a_cycle_too(tmp_path: Path):
    (tmp_path / "first.py").write_text("import second\n")
    (tmp_path / "second.py").write_text("def later():\n    from first import x\n")
    graph = {path.stem: imported_modules(path) & {"first", "second"} for path in tmp_path.glob("*.py")}
    assert find_cycle(graph) == ["first", "second", "first"]


def test_the_scan_sees_the_packages():
    layers = {layer_of(module_name(path)) for path in library_modules()}
    assert layers == set(LAYERS)
