"""Write exercises/ from solutions/: answer regions become stubs, outputs are cleared.

In a solutions notebook, an answer sits between `### BEGIN SOLUTION` and `### END SOLUTION`
inside a function body, under a markdown heading `## Exercise N: ...`. A cell tagged `check`
calls the lesson's check; in exercises/ it is also tagged `raises-exception`, since every
check must raise NotDone until the learner writes the answer.
"""

from __future__ import annotations

import copy
import hashlib
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
    nb.metadata["pgcourse"] = {"generated": fingerprint(nb)}
    return nb


def fingerprint(nb: nbformat.NotebookNode) -> str:
    """A hash of the cells' types and sources: what a learner edits (running cells changes nothing here)."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        digest.update(f"{cell.cell_type}\0{cell.source}\0".encode())
    return digest.hexdigest()[:16]


def edited(path: Path) -> bool:
    """True if the exercises notebook at `path` holds changes the generator did not write (a learner's work)."""
    nb = nbformat.read(path, as_version=4)
    recorded = nb.metadata.get("pgcourse", {}).get("generated")
    return recorded != fingerprint(nb)


class EditedExercises(Exception):
    """Exercises notebooks the generator refused to overwrite."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        names = ", ".join(p.name for p in paths)
        super().__init__(f"Left alone, because they hold edits the generator did not write (your answers?): {names}."
                         " Copy them elsewhere if you want to keep them; `make exercises FORCE=1` overwrites them.")


def target_path(solution_path: Path) -> Path:
    return solution_path.parent.parent / "exercises" / solution_path.name


def write_all(root: Path = ROOT, *, force: bool = False) -> list[Path]:
    """Regenerate every exercises notebook; return those that changed.

    An exercises notebook whose cells differ from what the generator last wrote into it (a learner's
    answers) is never overwritten unless `force`: the others are written, then EditedExercises names it.
    """
    changed, refused = [], []
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        text = nbformat.writes(make_exercises(nbformat.read(solution, as_version=4))) + "\n"
        out = target_path(solution)
        out.parent.mkdir(exist_ok=True)
        if out.exists() and out.read_text() == text:
            continue
        if out.exists() and not force and edited(out):
            refused.append(out)
            continue
        out.write_text(text)
        changed.append(out)
    if refused:
        raise EditedExercises(refused)
    return changed


def main(force: bool = False) -> int:
    """`make exercises`: write exercises/, say what changed, refuse to destroy a learner's edits."""
    try:
        changed = write_all(force=force)
    except EditedExercises as exc:
        print(exc)
        return 1
    for path in changed:
        print("wrote", path.relative_to(ROOT))
    if not changed:
        print("exercises/ is up to date.")
    return 0
