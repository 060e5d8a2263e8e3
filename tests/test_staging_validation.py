"""Lesson 05b's staging validation, run from the lesson's own cells (those tagged `shared-with-tests`).

The first try (`converts`, a cast through `regtype`) lets a number too big for `numeric(12,2)` and empty
required fields through, and the upsert then dies on them; the lesson's validation names every bad line,
with the same reason on PostgreSQL 16+ (`pg_input_error_info`) and on the fallback for older servers, which
runs here on the course server too. The SQL and the bad lines are read from the notebook, not copied.
"""

from __future__ import annotations

import ast
import csv
import io
import os
from collections import Counter
from decimal import Decimal

import nbformat
import psycopg
import pytest
from psycopg import errors

from pgcourse.server import ROOT

pytestmark = pytest.mark.usefixtures("checks_database")

LESSON = ROOT / "notebooks" / "05b_bulk_loading.ipynb"
TAG = "shared-with-tests"
GOOD = [("1", "sensor-001", "2026-01-01T00:00:07+00:00", "9999999999.99", '{"unit": "C"}'),  # the largest numeric(12,2)
        ("2", "sensor-002", "2026-01-01T00:00:14+00:00", "-0.5", "{}")]
LET_THROUGH_BY_THE_FIRST_TRY = {"50065": "value: numeric field overflow", "50066": "value is empty",
                                "50067": "taken_at is empty"}


def _shared_names() -> dict:
    """The values the tagged cells assign: literals, and expressions of earlier ones (`UPSERT_18.replace(...)`)."""
    names: dict = {}
    for cell in nbformat.read(LESSON, as_version=4).cells:
        if cell.cell_type != "code" or TAG not in cell.metadata.get("tags", []):
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        for node in ast.parse(source).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                try:
                    names[node.targets[0].id] = eval(compile(ast.Expression(node.value), LESSON.name, "eval"),
                                                     {"__builtins__": {}}, dict(names))
                except (NameError, AttributeError, TypeError):
                    pass  # refers to the notebook's runtime (a connection, a path): not SQL we need
    return names


LESSON_SQL = _shared_names()
BAD = LESSON_SQL["MALFORMED"] + LESSON_SQL["EMPTY"]


@pytest.fixture
def conn():
    """A fresh lesson05b schema with the lesson's table, and the good and bad lines staged by the lesson's COPY."""
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(LESSON_SQL["SCHEMA_SQL"])
        conn.execute(LESSON_SQL["STAGING_SQL"])
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(("id", "sensor", "taken_at", "value", "tags"))
        writer.writerows(GOOD + BAD)
        with conn.cursor() as cur, cur.copy(LESSON_SQL["STAGE_COPY"]) as copy:
            copy.write(text.getvalue())
        yield conn
        conn.execute("DROP SCHEMA lesson05b CASCADE")


def _problems(conn) -> dict[str, str | None]:
    return dict(conn.execute("SELECT id, problem FROM lesson05b.staging_checked ORDER BY line").fetchall())


def _first_try(conn) -> None:
    conn.execute(LESSON_SQL["CONVERTS_SQL"])
    conn.execute(LESSON_SQL["FIRST_VIEW_SQL"])


def _lesson_validation(conn, path: str) -> None:
    conn.execute(LESSON_SQL[path])
    conn.execute(LESSON_SQL["CHECKED_VIEW_SQL"])


def _paths(conn) -> list[str]:
    return ["INPUT_ERROR_FALLBACK"] + (["INPUT_ERROR_16"] if conn.info.server_version >= 160000 else [])


def test_the_notebook_holds_the_cases_this_test_is_about():
    ids = [line[0] for line in BAD]
    assert set(LET_THROUGH_BY_THE_FIRST_TRY) <= set(ids) and len(ids) == len(set(ids)) == 8
    assert {"SCHEMA_SQL", "STAGING_SQL", "STAGE_COPY", "CONVERTS_SQL", "FIRST_VIEW_SQL", "REPORT",
            "UPSERT_NAIVE", "INPUT_ERROR_16",
            "INPUT_ERROR_FALLBACK", "CHECKED_VIEW_SQL", "UPSERT_18", "MERGE_17", "UPSERT_XMAX"} <= set(LESSON_SQL)


def test_the_first_try_lets_the_new_cases_through(conn):
    _first_try(conn)
    problems = _problems(conn)
    assert {line_id for line_id, problem in problems.items() if problem is None} == {"1", "2", *LET_THROUGH_BY_THE_FIRST_TRY}
    assert all(problems[line[0]] for line in BAD if line[0] not in LET_THROUGH_BY_THE_FIRST_TRY)


def test_after_the_first_try_the_upsert_dies_on_them(conn):
    _first_try(conn)
    with pytest.raises(errors.NumericValueOutOfRange, match="numeric field overflow"):
        conn.execute(LESSON_SQL["UPSERT_NAIVE"])
    for line_id in ("50065", "50066"):  # remove the line that killed it: the next empty field kills it again
        conn.execute("DELETE FROM lesson05b.readings_staging WHERE id = %s", (line_id,))
        with pytest.raises(errors.NotNullViolation, match="null value in column"):
            conn.execute(LESSON_SQL["UPSERT_NAIVE"])
    assert conn.execute("SELECT count(*) FROM lesson05b.readings").fetchone()[0] == 0


@pytest.mark.parametrize("path", ["INPUT_ERROR_16", "INPUT_ERROR_FALLBACK"])
def test_the_lesson_validation_flags_every_bad_line(conn, path):
    if path not in _paths(conn):
        pytest.skip("pg_input_error_info needs PostgreSQL 16")
    _lesson_validation(conn, path)
    problems = _problems(conn)
    assert problems["1"] is None and problems["2"] is None
    assert all(problems[line[0]] for line in BAD), problems
    assert {key: problems[key] for key in LET_THROUGH_BY_THE_FIRST_TRY} == LET_THROUGH_BY_THE_FIRST_TRY
    conn.execute(LESSON_SQL["UPSERT_NAIVE"])  # no bad line reaches the table: the upsert goes through
    assert conn.execute("SELECT array_agg(id ORDER BY id) FROM lesson05b.readings").fetchone()[0] == [1, 2]


def test_both_paths_give_the_same_reasons(conn):
    paths = _paths(conn)
    if len(paths) < 2:
        pytest.skip("pg_input_error_info needs PostgreSQL 16")
    seen = []
    for path in paths:
        _lesson_validation(conn, path)
        seen.append(_problems(conn))
    assert seen[0] == seen[1]


def test_the_fallback_keeps_the_typmod_and_still_raises_on_a_misspelt_type(conn):
    conn.execute(LESSON_SQL["INPUT_ERROR_FALLBACK"])
    check = "SELECT lesson05b.input_error(%s, %s)"
    assert conn.execute(check, ("1e12", "numeric(12,2)")).fetchone()[0] == "numeric field overflow"
    assert conn.execute(check, ("1e12", "numeric")).fetchone()[0] is None
    assert conn.execute(check, ("9999999999.99", "numeric(12,2)")).fetchone()[0] is None
    assert conn.execute(check, (None, "integer")).fetchone()[0] is None  # NULL is the view's rule to judge
    with pytest.raises(errors.UndefinedObject):
        conn.execute(check, ("1", "integr"))


@pytest.mark.parametrize("statement, since", [("UPSERT_18", 180000), ("MERGE_17", 170000), ("UPSERT_XMAX", 0)])
def test_each_way_tells_inserted_from_updated(conn, statement, since):
    if conn.info.server_version < since:
        pytest.skip(f"{statement} needs PostgreSQL {since // 10000}")
    _lesson_validation(conn, _paths(conn)[-1])
    conn.execute("INSERT INTO lesson05b.readings VALUES (1, 'sensor-001', '2026-01-01', 1.00, '{}')")
    changed = conn.execute(LESSON_SQL[statement]).fetchall()
    assert Counter(action for action, *_ in changed) == {"INSERT": 1, "UPDATE": 1}
    assert {row_id: (action, now) for action, row_id, _, now in changed} == {
        1: ("UPDATE", Decimal("9999999999.99")), 2: ("INSERT", Decimal("-0.50"))}
