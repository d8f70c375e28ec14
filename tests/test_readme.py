"""README.md's Python blocks run as written, in order, in one namespace; the first prints what README says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> tuple[list[str], str]:
    """The ```python blocks, and the block printed after the first one ("prints ...:")."""
    text = README.read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    printed = re.search(r"```python\n.*?```\n\nprints[^\n]*:\n\n```\n(.*?)```", text, flags=re.S)
    assert code and printed, "README.md lost its Python examples"
    return code, printed.group(1)


def test_the_first_example_prints_what_readme_shows():
    code, printed = blocks()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code[0], "README.md[0]", "exec"), {"__name__": "__readme__"})
    assert out.getvalue() == printed


def test_every_example_runs():
    pytest.importorskip("spikingjelly.activation_based.neuron")
    pytest.importorskip("snntorch")
    code, _ = blocks()
    namespace: dict = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, block in enumerate(code):
            exec(compile(block, f"README.md[{i}]", "exec"), namespace)
