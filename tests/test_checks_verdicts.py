"""Every check, whatever the learner's function does, answers in its own voice.

For each check cell of every solutions notebook, the learner's functions are replaced by ones that
call sys.exit(), raise an unexpected error, or return nothing; the check must answer with a
CheckFailed (what it saw, and a hint), never a traceback of its own, never a frozen cell.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

from pgcourse.checks import CheckFailed

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("checks_database")

BODIES = {
    "sys.exit": ("import sys\n    sys.exit(3)", r"SystemExit|end the program"),
    "an unexpected error": ("raise RuntimeError('boom from the learner')", r"RuntimeError|boom from the learner"),
    "returns nothing": ("return None", r"."),
}


def _cells(nb_path: Path) -> list[tuple[str, str, list[str]]]:
    nb = json.loads(nb_path.read_text())
    return [(c["cell_type"], "".join(c["source"]), c.get("metadata", {}).get("tags", [])) for c in nb["cells"]]


def _checks() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted((ROOT / "solutions").glob("*_exercises.ipynb")):
        for i, (kind, src, tags) in enumerate(_cells(path)):
            if kind == "code" and "check" in tags:
                found.append((path.name, src.strip(), i))
    return found


def _namespace(nb_name: str) -> dict:
    module = types.ModuleType("__learner__")  # a real module, as a notebook's __main__ is: dataclasses need one
    sys.modules[module.__name__] = module
    ns = module.__dict__
    for kind, src, tags in _cells(ROOT / "solutions" / nb_name):
        if kind != "code" or "check" in tags or "raises-exception" in tags:
            continue
        code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        exec(compile(code, nb_name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), ns)
    return ns


def _hostile(tmp_path: Path, name: str, is_async: bool, body: str):
    """A function with the learner's name, written to a file (the lesson-06 checks read its source)."""
    module = tmp_path / f"hostile_{name}.py"
    module.write_text(f"{'async ' if is_async else ''}def {name}(*args, **kwargs):\n    {body}\n")
    spec = importlib.util.spec_from_file_location(module.stem, module)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


@pytest.mark.parametrize("behaviour", list(BODIES))
@pytest.mark.parametrize("nb_name, cell, index", _checks(), ids=lambda v: v if isinstance(v, str) and "(" in v else None)
def test_every_check_gives_a_verdict_whatever_the_function_does(nb_name, cell, index, behaviour, tmp_path):
    ns = _namespace(nb_name)
    call = ast.parse(cell).body[0].value
    call = call.value if isinstance(call, ast.Await) else call
    learners = [a.id for a in call.args if isinstance(a, ast.Name) and inspect.isfunction(ns.get(a.id))]
    assert learners, f"no learner function in {cell!r}"
    body, said = BODIES[behaviour]
    for name in learners:
        ns[name] = _hostile(tmp_path, name, inspect.iscoroutinefunction(ns[name]), textwrap.dedent(body))
    code = compile(cell, nb_name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    with pytest.raises(CheckFailed, match=said) as caught:
        result = eval(code, ns)
        if inspect.isawaitable(result):
            asyncio.run(result)
    assert "Hint:" in str(caught.value)
