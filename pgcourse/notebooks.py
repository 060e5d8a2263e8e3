"""Execute notebooks against a fresh copy of the course database (make execute, tests)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat

from . import provision
from .target import Target

KERNEL_VARIABLES = ("DATABASE_URL", "LIMITED_DATABASE_URL", "PATH", "COURSE_SOCKET_DIR")


def clone_name(label: str) -> str:
    """A database name for one notebook run: nb_<label>_<pid> (the sanitize file knows the shape)."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:40]
    return f"nb_{slug}_{os.getpid()}"


@contextmanager
def fresh_database(target: Target, label: str) -> Iterator[str]:
    """A clone of the template for one run, dropped afterwards with the progress its checks recorded."""
    from . import board

    name = clone_name(label)
    provision.clone(target.admin, name)
    try:
        yield name
    finally:
        provision.drop(target.admin, name)
        board.forget_database(target.admin, name)


def sessions_in(target: Target, dbname: str, wait: float = 0.0) -> list[str]:
    """Sessions still connected to `dbname`, polling up to `wait` seconds for them to go."""
    deadline = time.monotonic() + wait
    while True:
        with target.admin.connect() as conn:
            rows = conn.execute(
                "SELECT pid, usename, coalesce(application_name, ''), coalesce(state, ''), left(query, 80)"
                " FROM pg_stat_activity WHERE datname = %s ORDER BY pid", (dbname,)).fetchall()
        if not rows or time.monotonic() >= deadline:
            return [f"pid {pid} {user} app={app!r} state={state!r} last query={query!r}"
                    for pid, user, app, state, query in rows]
        time.sleep(0.1)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what changes on every run and teaches nothing: timing metadata, widget state, and the
    Python patch release that happened to run it (learners run 3.11 to 3.13)."""
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    return nb


def coalesce_streams(outputs: list) -> list:
    """Join consecutive stream outputs of one stream: how the kernel happened to flush them is a race."""
    joined: list = []
    for out in outputs:
        if (out.get("output_type") == "stream" and joined and joined[-1].get("output_type") == "stream"
                and joined[-1].get("name") == out.get("name")):
            joined[-1]["text"] += out["text"]
        else:
            joined.append(out)
    return joined


def execute(path: Path, target: Target, dbname: str, timeout: int = 300) -> nbformat.NotebookNode:
    """Run the notebook top to bottom in a new kernel whose DATABASE_URL points at `dbname`."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, record_timing=False, store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, **target.environment(dbname)})
    return clean(nb)


def execute_in_place(path: str | Path) -> float:
    """Re-execute a committed notebook against a fresh database and write it back; return seconds."""
    from . import target as target_module

    tgt = target_module.load(say=lambda *_: None)
    started = time.perf_counter()
    with fresh_database(tgt, Path(path).stem) as dbname:
        nb = execute(Path(path), tgt, dbname)
        leftover = sessions_in(tgt, dbname, wait=2.0)
    if leftover:
        raise RuntimeError(f"{path} left sessions open: {leftover}")
    nbformat.write(nb, path)
    return time.perf_counter() - started
