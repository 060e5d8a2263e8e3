"""The notebook harness catches what nbval alone lets through: leaks, silent deliberate failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from pgcourse import target
from pgcourse.server import ROOT

CONNECT = 'import os, psycopg\nconn = psycopg.connect(os.environ["DATABASE_URL"], application_name="{app}")'


def notebook(folder: Path, name: str, *cells) -> None:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


def executed(source: str, text: str, count: int = 1):
    """A cell as if executed, with `text` as its committed stdout."""
    cell = new_code_cell(source, execution_count=count)
    cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    """Run the fixture notebooks through the harness once; map 'notebook::Cell n' to its outcome."""
    target.load(say=lambda *_: None)  # the course server must be up for the nested run
    folder = tmp_path_factory.mktemp("harness")
    notebook(folder, "leaky", new_code_cell(CONNECT.format(app="leaky-notebook")))
    notebook(folder, "tidy", new_code_cell(CONNECT.format(app="tidy-notebook")),
             new_code_cell('assert conn.execute("SELECT current_database()").fetchone()[0].startswith("nb_tidy_")\n'
                           "conn.close()"))
    raises = new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]})
    silent = new_code_cell("x = 1", metadata={"tags": ["raises-exception"]})
    notebook(folder, "fails_on_purpose", raises)
    notebook(folder, "no_longer_fails", silent)
    live = 'print("took 0.5 ms on 127.0.0.1:54329 in nb_tidy_999, pid 4242, 3 rows")'
    notebook(folder, "sanitized", executed(live, "took 12.3 ms on 127.0.0.1:5555 in nb_tidy_1, pid 7, 3 rows\n"))
    notebook(folder, "real_change", executed(live, "took 12.3 ms on 127.0.0.1:5555 in nb_tidy_1, pid 7, 4 rows\n"))
    (folder / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.nbharness", "--nbval", "--nbval-sanitize-with",
         str(ROOT / "tests" / "sanitize.cfg"), "-p", "no:cacheprovider", "-rA", "-q", str(folder)],
        capture_output=True, text=True, cwd=folder, env=env, timeout=300)
    summary: dict[str, str] = {}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            node = rest.split(" - ")[0].strip().rsplit("/", 1)[-1]
            summary[node] = summary.get(node, "") + word + (" " + rest.split(" - ", 1)[1] if " - " in rest else "")
    summary["_stdout"] = result.stdout
    return summary


def test_a_leaked_connection_fails_the_notebook_and_is_named(outcomes):
    outcome = outcomes["leaky.ipynb::Cell 0"]
    assert outcome.startswith("PASSED") and "ERROR" in outcome, outcomes["_stdout"]
    assert "leaky.ipynb left 1 session(s) open" in outcomes["_stdout"]
    assert "app='leaky-notebook'" in outcomes["_stdout"]


def test_a_notebook_that_closes_its_connection_passes_in_its_own_database(outcomes):
    assert outcomes["tidy.ipynb::Cell 0"] == "PASSED"
    assert outcomes["tidy.ipynb::Cell 1"] == "PASSED", outcomes["_stdout"]


def test_a_tagged_cell_that_raises_passes(outcomes):
    assert outcomes["fails_on_purpose.ipynb::Cell 0"] == "PASSED"


def test_a_tagged_cell_that_stops_failing_is_caught(outcomes):
    outcome = outcomes["no_longer_fails.ipynb::Cell 0"]
    assert outcome.startswith("FAILED") and "raised no error" in outcome, outcomes["_stdout"]


def test_sanitizing_hides_durations_ports_pids_and_clone_names_but_not_data(outcomes):
    assert outcomes["sanitized.ipynb::Cell 0"] == "PASSED", outcomes["_stdout"]
    assert outcomes["real_change.ipynb::Cell 0"].startswith("FAILED"), outcomes["_stdout"]


def test_clone_databases_are_dropped(outcomes):
    tgt = target.load(say=lambda *_: None)
    with tgt.admin.connect() as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^nb_(leaky|tidy)_'").fetchall()
    assert left == []
