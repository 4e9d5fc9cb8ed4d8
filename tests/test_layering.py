"""The package layering of docs/architecture.md, checked on every import statement in src/convirt (via ast).

A package may import its own modules and packages of a lower layer, never one of its own layer or above, so the
package graph has no cycle. The data flows upwards: foundation -> text -> data/models -> prepare/synthetic ->
encoders -> engine/objectives -> evaluation/analysis -> demo/app/reproduce -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import convirt

SOURCE = Path(convirt.__file__).parent

LAYERS: dict[str, int] = {
    "errors": 0,
    # foundation: used everywhere, import nothing of the project but errors
    "fileio": 1,
    "paths": 1,
    "runtime": 1,
    "schedule": 1,
    "config": 1,
    "imagenet": 1,
    "text": 2,
    "data": 3,
    "models": 3,
    "losses": 3,
    "prepare": 4,
    "synthetic": 4,
    "encoders": 5,
    "api": 6,  # the public face of encoders
    "engine": 7,
    "objectives": 8,  # each objective plugs into the engine; the engine imports none of them
    "evaluation": 9,
    "analysis": 9,
    "demo": 10,
    "app": 10,  # the web explorer (convirt serve)
    "reproduce": 10,  # the paper end to end: orders the evaluations, below the command line
    "cli": 11,
}

KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports() -> list[tuple[str, str, int]]:
    """(importing module, imported convirt module, line) for every import statement, top level or in a function."""
    found = []
    for file in sorted(SOURCE.rglob("*.py")):
        module = ".".join(("convirt", *file.relative_to(SOURCE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):  # relative: inside its own package
                continue
            else:
                continue
            found += [(module, name, node.lineno) for name in names if name.split(".")[0] == "convirt"]
    return found


def forbidden(imports: list[tuple[str, str, int]]) -> list[str]:
    problems = []
    for importer, imported, line in imports:
        source, target = _package(importer), _package(imported)
        if source == target or not target or not source or (source, target) in KNOWN_EXCEPTIONS:
            continue
        if source not in LAYERS or target not in LAYERS:
            problems.append(f"{importer}:{line} imports {imported}: add its package to LAYERS")
        elif LAYERS[target] >= LAYERS[source]:
            problems.append(f"{importer}:{line} imports {imported} (layer {LAYERS[target]} >= {LAYERS[source]})")
    return problems


def test_no_package_imports_its_own_layer_or_above():
    imports = project_imports()
    assert len(imports) > 100  # the walk sees the project
    assert forbidden(imports) == []


def test_the_check_catches_an_upward_and_a_sideways_import():
    assert forbidden([("convirt.models.image", "convirt.encoders.spec", 3)]) == [
        "convirt.models.image:3 imports convirt.encoders.spec (layer 5 >= 3)"
    ]
    assert forbidden([("convirt.evaluation.retrieval", "convirt.analysis.search", 9)]) == [
        "convirt.evaluation.retrieval:9 imports convirt.analysis.search (layer 9 >= 9)"
    ]
    assert forbidden([("convirt.cli.plot", "convirt.analysis.search", 1)]) == []
    assert forbidden([("convirt.newpackage.x", "convirt.errors", 1)]) == [
        "convirt.newpackage.x:1 imports convirt.errors: add its package to LAYERS"
    ]


@pytest.mark.parametrize("package", ["models", "losses"])
def test_models_and_losses_import_no_training_framework_and_no_config(package: str):
    for importer, imported, line in project_imports():
        if _package(importer) == package:
            assert imported not in ("convirt.config", "convirt.engine", "convirt.objectives"), f"{importer}:{line}"
    for file in [SOURCE / "losses.py", *(SOURCE / "models").glob("*.py")]:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in names), file
