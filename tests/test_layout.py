"""The library's layout (issue #27): no import circle, no import of a program, a small package root.

The import graph is grimp's (the engine of import-linter): it reads every import statement of
the package, those inside functions included, without importing anything.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util

import grimp
import pytest
from conftest import ROOT

LIBRARY = "keras_ehrnet"
PROGRAMS = ("training", "evaluation", "conversion")
MAX_ROOT_MODULES = 8


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(LIBRARY, *PROGRAMS, cache_dir=None, exclude_type_checking_imports=True)


def _library_modules(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m == LIBRARY or m.startswith(LIBRARY + "."))


def test_no_import_circle_in_the_library(graph):
    circles = []
    for importer in _library_modules(graph):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if not imported.startswith(LIBRARY):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                circles.append(" -> ".join((importer, *back)))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_library_imports_no_program(graph):
    offending = [
        f"{importer} imports {imported}"
        for importer in _library_modules(graph)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        if imported.split(".")[0] in PROGRAMS
    ]
    assert not offending, "\n".join(offending)


def test_the_graph_sees_the_wings(graph):
    """Guards the two tests above against an empty graph: the wings and their imports are there."""
    modules = set(_library_modules(graph))
    for wing in ("models", "weights", "inference", "deploy", "data", "train", "metrics"):
        assert f"{LIBRARY}.{wing}" in modules
    # the package root imports its public names on first use (importlib), so look one level down
    assert "keras_ehrnet.models.model" in graph.find_modules_directly_imported_by(
        "keras_ehrnet.deploy.exporter"
    )
    assert "keras_ehrnet.deploy.runtimes" in graph.find_modules_directly_imported_by(
        "keras_ehrnet.inference.predictor"
    )


def test_every_name_the_library_imports_from_itself_exists():
    """Imports inside functions run late: a name moved away fails only when that path runs.

    The library and the programs are read; `import keras_ehrnet.x` counts as well as `from ... import`.
    """
    missing = []
    sources = [p for folder in (LIBRARY, *PROGRAMS) for p in sorted((ROOT / folder).rglob("*.py"))]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(LIBRARY) and importlib.util.find_spec(alias.name) is None:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} import {alias.name}")
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith(LIBRARY)
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if (
                        not hasattr(module, alias.name)
                        and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                    ):
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, "\n".join(missing)


def test_package_root_is_small():
    root_modules = sorted(p.name for p in (ROOT / LIBRARY).glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
