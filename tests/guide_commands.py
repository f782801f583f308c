"""Read the commands and code shown in the README and the guides, so tests can run them as written."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def python_m_commands(path: Path, language: str = "bash") -> list[list[str]]:
    """Each `python -m …` line of the file's fenced blocks of `language`, split like a shell would."""
    commands = []
    for block in code_blocks(path, language):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m "):
                commands.append(shlex.split(line))
    return commands


def run_module(argv: list[str]) -> int:
    """Run `python -m MODULE ARGS…` in this process (the programs expose main(argv))."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    try:
        program = importlib.import_module(f"{module}.__main__")
    except ModuleNotFoundError:
        program = importlib.import_module(module)
    return program.main(argv[3:])
