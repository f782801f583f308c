"""Shared fixtures. Quiet TensorFlow before anything imports it."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference facts not found at {REFERENCE}")
    return REFERENCE


_MODELS: dict = {}


def cached_model(level: str, **kwargs):
    """One randomly initialised model per (level, kwargs) for the whole session.

    Tests that change weights must build their own model instead.
    """
    import keras_ehrnet

    key = (level, tuple(sorted(kwargs.items())))
    if key not in _MODELS:
        _MODELS[key] = keras_ehrnet.build_model(level, **kwargs)
    return _MODELS[key]


class restored_weights:  # noqa: N801 - used as a context manager
    """Lend a cached model to a test that assigns weights; put them back afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = [w.numpy().copy() for w in self.model.weights]
        return self.model

    def __exit__(self, *exc):
        for w, v in zip(self.model.weights, self.saved):
            w.assign(v)
        return False
