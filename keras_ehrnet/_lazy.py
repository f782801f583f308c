"""Public names imported on first use (PEP 562), one implementation for every package that needs it.

The package root, `data`, `train` and `deploy` keep TensorFlow, Keras or pycocotools off the import
path of code that does not need them (an exported `.onnx` run by ONNX Runtime, training on JAX).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_getattr(package: str, homes: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name in `homes[module]` comes from
    `package.module` when first asked for, and is then cached in the package's namespace."""
    home_of = {name: module for module, names in homes.items() for name in names}

    def module_getattr(name: str) -> Any:
        module = home_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # A TensorFlow-only module raises TensorFlowRequiredError (one line naming it) without TF.
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return module_getattr
