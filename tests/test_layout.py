"""The library's layout (issue #27): no import circle, no import of a program, a small package root.

The import graph is grimp's (the engine of import-linter): it reads every import statement of
the package, those inside functions included, without importing anything.
"""

from __future__ import annotations

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
    assert "keras_ehrnet.models.model" in graph.find_modules_directly_imported_by(LIBRARY)
    assert "keras_ehrnet.deploy.runtimes" in graph.find_modules_directly_imported_by(
        "keras_ehrnet.inference.predictor"
    )


def test_package_root_is_small():
    root_modules = sorted(p.name for p in (ROOT / LIBRARY).glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
