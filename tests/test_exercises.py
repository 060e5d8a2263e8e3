"""The exercise system: exercises/ generated from solutions/, twins, every check proven both ways.

The notebook runs prove each check both ways: nbval runs solutions/ (every check must pass) and
exercises/ (the harness requires every check cell to raise NotDone on the stubs). This file
proves the generator, the pairing, and that no check is left out of those runs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re

import nbformat
import pytest

import pgcourse.checks
from pgcourse.authoring import next_source
from pgcourse.exercises import BEGIN, CHECK_TAG, make_exercises, stub_source, target_path
from pgcourse.server import ROOT

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_every_solution_has_an_exercises_twin_and_back():
    assert SOLUTIONS, "no solutions notebooks"
    assert [p.name for p in SOLUTIONS] == [p.name for p in EXERCISES]
    for path in SOLUTIONS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+_exercises\.ipynb", path.name)
        assert (ROOT / "notebooks").glob(path.name[:2] + "*_*.ipynb"), f"{path.name} has no lesson"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercises_are_exactly_what_the_generator_writes(path):
    expected = nbformat.writes(make_exercises(nbformat.read(path, as_version=4))) + "\n"
    assert target_path(path).read_text() == expected, "exercises/ is stale: run `make exercises`"


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercises_hold_no_answers_and_say_how_to_work(path):
    nb = nbformat.read(path, as_version=4)
    assert all(BEGIN not in c.source for c in nb.cells)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "How to use this notebook" in nb.cells[0].source and "make db-reset" in nb.cells[0].source
    assert nb.cells[-1].source == next_source(path), "run `make nav`, then `make exercises`"
    stubs = [c for c in nb.cells if "raise NotImplementedError" in c.source]
    numbers = sorted({int(n) for c in stubs for n in re.findall(r'NotImplementedError\("Exercise (\d+)', c.source)})
    assert numbers == sorted(int(n) for n in re.findall(r"^## Exercise (\d+)", text, re.M))
    assert len(numbers) >= 3, "each lesson has three exercises or more"


def test_stub_keeps_indentation_and_the_exercise_number():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    assert stub_source(source, 4) == 'def f(x):\n    raise NotImplementedError("Exercise 4: write your code here")'
    with pytest.raises(ValueError):
        stub_source("### BEGIN SOLUTION\nx = 1\n", 1)


def _check_functions() -> dict[str, set[str]]:
    found = {}
    for info in pkgutil.iter_modules(pgcourse.checks.__path__):
        module = importlib.import_module(f"pgcourse.checks.{info.name}")
        found[info.name] = {name for name, fn in inspect.getmembers(module, inspect.isfunction)
                            if fn.__module__ == module.__name__ and not name.startswith("_")}
    return found


def test_every_check_is_called_by_a_check_cell_of_a_solutions_notebook():
    called = set()
    for path in SOLUTIONS:
        for cell in nbformat.read(path, as_version=4).cells:
            if CHECK_TAG in cell.metadata.get("tags", []):
                tree = ast.parse(cell.source.replace("await ", ""))
                called |= {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
                           if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                           and isinstance(n.func.value, ast.Name)}
    for module, functions in _check_functions().items():
        for function in functions:
            assert f"check.{function}" in called, f"pgcourse.checks.{module}.{function} is never run by a notebook"
