"""Sessions: a step is 'blocked' when the server says it waits for a lock, never by a timer.

Run on a busy machine too: each test here also runs with every core kept busy by other
processes, as a learner's laptop or a second test suite would.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import psycopg
import pytest

from pgcourse.sessions import Sessions

TABLE = "sessions_test.accounts"


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


@pytest.fixture(params=["quiet", "busy"])
def load(request):
    """'busy': one spinning process per core while the test runs."""
    procs = []
    if request.param == "busy":
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_spin, args=(time.monotonic() + 120,), daemon=True)
                 for _ in range(os.cpu_count() or 2)]
        for p in procs:
            p.start()
    yield request.param
    for p in procs:
        p.terminate()
        p.join()


@pytest.fixture
def url(checks_database):
    url = os.environ["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sessions_test CASCADE")
        conn.execute("CREATE SCHEMA sessions_test")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 100), (2, 100)")
    return url


def outcomes(s: Sessions) -> list[tuple[str, str]]:
    return [(step.session, step.outcome) for step in s.steps]


def test_deadlock_timeline_is_the_same_every_time(url, load):
    for _ in range(2):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"UPDATE {TABLE} SET balance = 100")
        with Sessions(url) as s:
            s.run("A", "BEGIN")
            s.run("B", "BEGIN")
            s.run("A", f"UPDATE {TABLE} SET balance = balance - 10 WHERE id = 1")
            s.run("B", f"UPDATE {TABLE} SET balance = balance - 10 WHERE id = 2")
            s.run("A", f"UPDATE {TABLE} SET balance = balance + 10 WHERE id = 2")
            s.run("B", f"UPDATE {TABLE} SET balance = balance + 10 WHERE id = 1")
            victim = s.finish("A")
            s.finish("B")
            s.run("A", "ROLLBACK")
            s.run("B", "COMMIT")
        assert isinstance(victim, psycopg.errors.DeadlockDetected)
        assert outcomes(s) == [
            ("A", "BEGIN"), ("B", "BEGIN"), ("A", "UPDATE 1"), ("B", "UPDATE 1"),
            ("A", "waits (blocked)"), ("B", "waits (blocked)"),
            ("A", "resumed: ERROR 40P01: deadlock detected"), ("B", "resumed: UPDATE 1"),
            ("A", "ROLLBACK"), ("B", "COMMIT")]


def test_a_slow_statement_is_not_called_blocked(url, load):
    with Sessions(url) as s:
        s.run("A", "SELECT pg_sleep(1.5)")
    assert [step.blocked for step in s.steps] == [False]


def test_lock_timeout_ends_the_wait_in_the_same_step(url, load):
    with Sessions(url) as s:
        s.run("A", "BEGIN")
        s.run("A", f"UPDATE {TABLE} SET balance = 0 WHERE id = 1")
        s.run("B", "SET lock_timeout = '200ms'")
        error = s.run("B", f"UPDATE {TABLE} SET balance = 1 WHERE id = 1")
        s.run("A", "ROLLBACK")
    assert isinstance(error, psycopg.errors.LockNotAvailable)
    assert outcomes(s)[3] == ("B", "ERROR 55P03: canceling statement due to lock timeout")


def test_close_ends_a_wait_and_every_connection(url):
    s = Sessions(url)
    s.run("A", "BEGIN")
    s.run("A", f"UPDATE {TABLE} SET balance = 0 WHERE id = 1")
    s.run("B", f"UPDATE {TABLE} SET balance = 1 WHERE id = 1")
    assert s.steps[-1].outcome == "waits (blocked)"
    s.close()
    assert all(c.closed for c in [*s.conns.values(), s.observer])


def test_a_session_the_server_ended_reports_why(url):
    """The statement after a server-side timeout shows the server's reason, not 'the connection is closed'."""
    with Sessions(url) as s:
        s.run("A", "BEGIN")
        s.run("A", "SET idle_in_transaction_session_timeout = '300ms'")
        time.sleep(1.5)
        error = s.run("A", "SELECT 1")
    assert isinstance(error, psycopg.Error) and error.sqlstate == "25P03"
    assert s.steps[-1].outcome == "ERROR 25P03: terminating connection due to idle-in-transaction timeout"


def test_sessions_left_counts_this_notebooks_sessions_only(url, tmp_path):
    """Another notebook (a process that is not ours) connected to the same database is not this
    notebook's leak; a connection this process forgot to close is."""
    import subprocess
    import sys

    from pgcourse.sessions import sessions_left

    ready, go = tmp_path / "ready", tmp_path / "go"
    code = ("import os, pathlib, time, psycopg\n"
            "c = psycopg.connect(os.environ['DATABASE_URL'])\n"
            f"pathlib.Path({str(ready)!r}).write_text('open')\n"
            f"deadline = time.time() + 60\nwhile not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:\n"
            "    time.sleep(0.05)\n")
    # Started through a shell that exits at once, so the process is not a child of this one.
    subprocess.run(["sh", "-c", '"$0" -c "$1" >/dev/null 2>&1 &', sys.executable, code], check=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the other process did not connect"
        assert sessions_left(url, wait=0.5) == 0
        forgotten = psycopg.connect(url)
        try:
            assert sessions_left(url, wait=0.5) == 1
        finally:
            forgotten.close()
        assert sessions_left(url) == 0
    finally:
        go.write_text("go")
