"""pytest plugin: run each notebook (via nbval) against its own clone of the course database.

On top of nbval it asserts two things nbval cannot:
- a cell tagged `raises-exception` (a deliberate failure) really raised an error;
- after the last cell, while the kernel is still alive, no session is left in the notebook's
  database (polled for up to LEAK_WAIT seconds); a leftover fails the notebook, named.
"""

from __future__ import annotations

import os

import pytest
from nbval.plugin import IPyNbCell

from pgcourse import board, provision
from pgcourse import target as target_module
from pgcourse.notebooks import KERNEL_VARIABLES, clone_name, sessions_in

DELIBERATE_FAILURE = "raises-exception"
CHECK = "check"
LEAK_WAIT = 2.0


def _target(config: pytest.Config) -> target_module.Target:
    tgt = getattr(config, "_course_target", None)
    if tgt is None:
        tgt = target_module.load(say=lambda message: print(f"[pgcourse] {message}"))
        config._course_target = tgt
    return tgt


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the course server before any test, so the run knows whether to stop it at the end."""
    _target(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    tgt = getattr(config, "_course_target", None)
    if tgt is not None and tgt.started_here and tgt.cluster is not None:
        tgt.cluster.stop()  # leave the machine as we found it: we started it, we stop it


def _last_cell(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    return nextitem is None or nextitem.parent is not item.parent


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a notebook's kernel starts: clone its database and point DATABASE_URL at it."""
    notebook = item.parent
    if not isinstance(item, IPyNbCell) or hasattr(notebook, "_course_db"):
        return
    tgt = _target(item.config)
    name = clone_name(notebook.path.stem)
    provision.clone(tgt.admin, name)
    notebook._course_db = name
    notebook._saved_env = {key: os.environ.get(key) for key in KERNEL_VARIABLES}
    os.environ.update(tgt.environment(name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    tags = item.cell.metadata.get("tags", []) if isinstance(item, IPyNbCell) else []
    errors = [out for out in (getattr(item, "test_outputs", None) or []) if out.get("output_type") == "error"]
    if DELIBERATE_FAILURE in tags and not errors:
        pytest.fail(f"Cell {item.cell_num} is tagged {DELIBERATE_FAILURE!r} (a deliberate failure)"
                    " but raised no error: the failure it demonstrates no longer happens.", pytrace=False)
    if CHECK in tags and item.path.parent.name == "exercises" and [e.get("ename") for e in errors] != ["NotDone"]:
        got = ", ".join(f"{e.get('ename')}: {e.get('evalue')}" for e in errors) or "no error at all"
        pytest.fail(f"Check cell {item.cell_num} of an exercises notebook must raise NotDone on the stub;"
                    f" it gave {got}.", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    notebook = item.parent
    if not (isinstance(item, IPyNbCell) and _last_cell(item, nextitem) and hasattr(notebook, "_course_db")):
        return (yield)
    tgt = _target(item.config)
    leftover = sessions_in(tgt, notebook._course_db, wait=LEAK_WAIT)  # the kernel is still alive here
    try:
        return (yield)  # nbval stops the kernel
    finally:
        provision.drop(tgt.admin, notebook._course_db)
        board.forget_database(tgt.admin, notebook._course_db)  # the outcomes its checks recorded
        for key, value in notebook._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        del notebook._course_db
        if leftover:
            pytest.fail(f"{notebook.path.name} left {len(leftover)} session(s) open after its last cell:\n  "
                        + "\n  ".join(leftover) + "\nClose every connection, pool and engine the notebook opens.",
                        pytrace=False)
