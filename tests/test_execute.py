"""`make execute` refreshes a notebook without noise: only sanitized values and images change."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys

import nbformat
from nbval.plugin import get_sanitize_patterns

from pgcourse.notebooks import coalesce_streams
from pgcourse.server import ROOT

PATTERNS = get_sanitize_patterns((ROOT / "tests" / "sanitize.cfg").read_text())


def sanitize(text: str) -> str:
    for regex, replacement in PATTERNS:
        text = re.sub(regex, replacement, text)
    return text


def comparable(nb: nbformat.NotebookNode) -> list:
    """Everything in a notebook that must not change on re-execution, sanitized."""
    cells = []
    for cell in nb.cells:
        entry = [cell.cell_type, cell.source, dict(cell.metadata)]
        if cell.cell_type == "code":
            entry.append(cell.execution_count)
            for out in coalesce_streams(copy.deepcopy(cell.outputs)):  # a flush's timing is not content
                data = {k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")}
                entry.append((out.output_type, out.get("name"), sanitize(str(out.get("text", ""))),
                              {k: sanitize(str(v)) for k, v in data.items()}))
        cells.append(entry)
    return [dict(nb.metadata), cells]


def test_make_execute_changes_nothing_but_sanitized_values(tmp_path):
    lesson = ROOT / "notebooks" / "00_welcome.ipynb"
    (tmp_path / "notebooks").mkdir()
    copy = tmp_path / "notebooks" / lesson.name
    shutil.copy(lesson, copy)
    shutil.copy(ROOT / "requirements.txt", tmp_path)  # the lesson reads ../requirements.txt
    result = subprocess.run([sys.executable, "-m", "pgcourse", "execute", str(copy)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    before, after = nbformat.read(lesson, as_version=4), nbformat.read(copy, as_version=4)
    assert comparable(after) == comparable(before)
    assert "widgets" not in after.metadata
    assert all("execution" not in c.metadata for c in after.cells)


def test_streams_are_joined_however_the_kernel_flushed_them():
    one = [{"output_type": "stream", "name": "stdout", "text": "Exception reporting mode: Minimal\nconnected\n"}]
    two = [{"output_type": "stream", "name": "stdout", "text": "Exception reporting mode: Minimal\n"},
           {"output_type": "stream", "name": "stdout", "text": "connected\n"}]
    assert coalesce_streams(copy.deepcopy(two)) == one
    mixed = [two[0], {"output_type": "stream", "name": "stderr", "text": "!"}, two[1]]
    assert coalesce_streams(copy.deepcopy(mixed)) == mixed
