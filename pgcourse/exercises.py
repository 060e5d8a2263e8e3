"""Write exercises/ from solutions/: answer regions become stubs, outputs are cleared.

In a solutions notebook, an answer sits between `### BEGIN SOLUTION` and `### END SOLUTION`
inside a function body, under a markdown heading `## Exercise N: ...`. A cell tagged `check`
calls the lesson's check; in exercises/ it is also tagged `raises-exception`, since every
check must raise NotDone until the learner writes the answer.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .server import ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_TAG = "check"
EXERCISE_HEADING = re.compile(r"^## Exercise (\d+)\b", re.M)


def stub_source(source: str, exercise: int) -> str:
    """Replace each answer region with a NotImplementedError stub at the region's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise}: write your code here")')
        elif line.strip() == END:
            if not inside:
                raise ValueError(f"{END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def make_exercises(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The exercises notebook for a solutions notebook."""
    nb = copy.deepcopy(solution)
    exercise = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = EXERCISE_HEADING.findall(cell.source)
            exercise = int(found[-1]) if found else exercise
            continue
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            if exercise == 0:
                raise ValueError("an answer region comes before any '## Exercise N' heading")
            cell.source = stub_source(cell.source, exercise)
        tags = cell.metadata.get("tags", [])
        if CHECK_TAG in tags and "raises-exception" not in tags:
            cell.metadata["tags"] = [*tags, "raises-exception"]
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def target_path(solution_path: Path) -> Path:
    return solution_path.parent.parent / "exercises" / solution_path.name


def write_all(root: Path = ROOT) -> list[Path]:
    """Regenerate every exercises notebook; return those that changed."""
    changed = []
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        text = nbformat.writes(make_exercises(nbformat.read(solution, as_version=4))) + "\n"
        out = target_path(solution)
        out.parent.mkdir(exist_ok=True)
        if not out.exists() or out.read_text() != text:
            out.write_text(text)
            changed.append(out)
    return changed
