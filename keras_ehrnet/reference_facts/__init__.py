"""Facts measured from the authors' released PyTorch code (no code): shapes, counts, latencies.

Copied from the project's shared reference material; see README.md beside this file.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@cache
def load_state_dict_facts(level: str) -> dict:
    """`ref_state_dict_<level>.json`, or the summary for level="summary"."""
    path = HERE / f"ref_state_dict_{level}.json"
    if not path.is_file():
        raise ValueError(f"No reference state_dict facts for level {level!r} ({path.name} not found).")
    return json.loads(path.read_text())


@cache
def load_model_table() -> dict:
    """Parameters, MACs and CPU latencies of the reference models."""
    return json.loads((HERE / "ref_model_table.json").read_text())
