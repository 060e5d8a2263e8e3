"""Authoring helpers: the generated navigation cell at the end of every lesson."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .server import ROOT

NAV_TAG = "navigation"
SOLUTIONS = ROOT / "solutions"
LESSON_NAME = re.compile(r"^(\d\d[a-z]?)_[a-z0-9_]+\.ipynb$")


def lessons(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The lesson notebooks in order."""
    return sorted(p for p in folder.glob("*.ipynb") if LESSON_NAME.match(p.name))


def title(path: Path) -> str:
    """The notebook's first heading, without the '# '."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source.splitlines()[0]
    return first.lstrip("# ").strip()


def nav_source(path: Path) -> str:
    """Previous / contents / next links for a lesson, from the lessons that exist."""
    order = lessons(path.parent)
    i = order.index(path)
    parts = []
    if i > 0:
        parts.append(f"← Previous: [{title(order[i - 1])}]({order[i - 1].name})")
    parts.append("[Contents](../README.md#the-lessons)")
    parts.append(f"Next: [{title(order[i + 1])}]({order[i + 1].name}) →" if i + 1 < len(order)
                 else "Next: this is the course's last lesson; its exercises review the whole course")
    return " | ".join(parts)


def next_source(exercises: Path) -> str:
    """The closing cell of an exercises notebook: the next lesson, or the lesson list until it exists."""
    later = [p for p in lessons(exercises.parent.parent / "notebooks") if p.name[:2] > exercises.name[:2]]
    if later:
        return f"## Next\n\nDone? Go on to [{title(later[0])}](../notebooks/{later[0].name})."
    return ("## Next\n\nDone? That was the course's last exercise. [The lessons](../README.md#the-lessons) list what each"
            " one covers, for when production asks you about it.")


def write_nav(path: Path) -> bool:
    """Make the notebook's last cell the generated navigation; return whether it changed."""
    nb = nbformat.read(path, as_version=4)
    source = next_source(path) if path.parent.name == "solutions" else nav_source(path)
    last = nb.cells[-1]
    if last.cell_type == "markdown" and NAV_TAG in last.metadata.get("tags", []):
        if last.source == source:
            return False
        last.source = source
    else:
        nb.cells.append(nbformat.v4.new_markdown_cell(source, metadata={"tags": [NAV_TAG]}))
    nbformat.write(nb, path)
    return True
