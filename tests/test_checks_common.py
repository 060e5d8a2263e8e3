"""The machinery every check shares (pgcourse.checks): time limits, verdicts for anything the learner's
code raises, captured output and leaked secrets, session tagging, physical disorder, best-of timing."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text

from pgcourse import checks
from pgcourse.checks import CheckFailed, NotDone

pytestmark = pytest.mark.usefixtures("checks_database")


@pytest.fixture(autouse=True)
def nothing_left_captured():
    yield
    assert not checks._sinks and not checks._installed, "a capture was left running"


def test_run_returns_the_result_and_shows_what_the_function_printed(capsys):
    def fn(a, b):
        print("working on", a)
        return a + b

    assert checks.run(1, fn, 2, 3) == 5
    assert "working on 2" in capsys.readouterr().out


def test_not_implemented_is_not_done():
    def stub(conn):
        raise NotImplementedError("Exercise 1: write your code here")

    with pytest.raises(NotDone, match="Exercise 1 is not done yet"):
        checks.run(1, stub, None)


@pytest.mark.parametrize("body, said", [
    (lambda: sys.exit(1), r"tried to end the program \(SystemExit\(1\)\)"),
    (lambda: exit(), "tried to end the program"),
    (lambda: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda: (_ for _ in ()).throw(KeyError("x")), "raised KeyError"),
])
def test_anything_raised_becomes_a_verdict_in_the_checks_voice(body, said):
    def fn():
        return body()

    with pytest.raises(CheckFailed, match=said) as caught:
        checks.run(1, fn)
    assert "Hint:" in str(caught.value)


def test_allowed_exceptions_reach_the_check_as_they_are():
    def fn():
        raise ValueError("insufficient funds")

    with pytest.raises(ValueError, match="insufficient funds"):
        checks.run(1, fn, allowed=(ValueError,))


def test_a_python_loop_that_never_ends_gets_a_verdict():
    def forever():
        while True:
            time.sleep(0.01)

    start = time.monotonic()
    with pytest.raises(CheckFailed, match=r"did not finish within 1 s"):
        checks.run(1, forever, timeout=1)
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name == "exercise 1"], "the learner's thread was not stopped"


def test_a_query_that_waits_forever_is_cancelled():
    url = os.environ["DATABASE_URL"]
    tag = checks.new_tag(1)
    with checks.learner_env(tag):
        def sleeps():
            with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
                conn.execute("SELECT pg_sleep(600)")

        start = time.monotonic()
        with pytest.raises(CheckFailed, match="did not finish within 2 s"):
            checks.run(1, sleeps, timeout=2, tag=tag)
        assert time.monotonic() - start < 15
    with checks.check_connect(url, autocommit=True) as observer:
        assert checks.wait_for_sessions_to_end(observer, tag) == []


def test_an_async_function_that_swallows_cancellation_still_gets_a_verdict():
    async def stubborn():
        swallowed = 0
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:  # the check cancels once; asyncio.run's clean-up cancels again
                    raise

    async def main():
        with pytest.raises(CheckFailed, match="did not finish within 1 s"):
            await checks.arun(1, stubborn, timeout=1)

    asyncio.run(main())


def test_arun_stops_a_coroutine_that_never_yields_to_the_loop():
    """No cancellation reaches a coroutine that spins without yielding; the watchdog stops it all the same."""
    async def spins():  # `except CancelledError: continue` around an await that raises at once
        done = asyncio.get_running_loop().create_future()
        done.cancel()
        while True:
            try:
                await done
            except asyncio.CancelledError:
                continue

    async def spins_once_cancelled():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            while True:
                pass

    async def main():
        for fn in (spins, spins_once_cancelled):
            start = time.monotonic()
            with pytest.raises(CheckFailed, match="did not finish within 1 s"):
                await checks.arun(1, fn, timeout=1)
            assert time.monotonic() - start < 1 + checks.WATCHDOG_GRACE + 2
        await asyncio.sleep(1.5)  # nothing is left to land in the loop's thread later
        assert await checks.arun(1, lambda: asyncio.sleep(0, result=7)) == 7

    asyncio.run(main())


def test_async_functions_are_awaited_and_judged_like_sync_ones():
    async def ok(x):
        await asyncio.sleep(0)
        return x * 2

    async def exits():
        raise SystemExit(2)

    async def main():
        assert await checks.arun(1, ok, 21) == 42
        with pytest.raises(CheckFailed, match="SystemExit"):
            await checks.arun(1, exits)

    asyncio.run(main())
    assert checks.run(1, ok, 4) == 8  # run() awaits a coroutine function too


SECRET_URL = "postgresql://learner:s3cret-Pa55@127.0.0.1:5432/course"


@pytest.mark.parametrize("leak", [
    lambda url: print("connecting to", url),
    lambda url: print(url.split(":")[2].split("@")[0], file=sys.stderr),
    lambda url: logging.getLogger("app").warning("using %s", url),
    lambda url: logging.getLogger("app.db").debug("url=%s", url),  # dropped at the default level: a leak all the same
    lambda url: threading.Thread(target=print, args=(url,)).start() or time.sleep(0.2),
])
def test_a_printed_or_logged_secret_fails_the_check(leak, capsys):
    def fn(url):
        leak(url)
        return "ok"

    with pytest.raises(CheckFailed, match="printed or logged a secret") as caught:
        checks.run(2, fn, SECRET_URL, secrets=checks.secrets_in(SECRET_URL))
    assert "s3cret-Pa55" not in str(caught.value)
    out = capsys.readouterr()
    assert "s3cret-Pa55" not in out.out + out.err, "what the learner printed is shown with the secret masked"


def test_secrets_default_to_the_database_urls_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pa%40ss%3Aword@h/db")
    assert set(checks.secrets_in()) >= {"pa@ss:word", "pa%40ss%3Aword"}
    monkeypatch.setenv("DATABASE_URL", "host=h user=u password=hunter22 dbname=db")
    assert "hunter22" in checks.secrets_in()


def test_logging_is_restored_after_a_capture():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = sys.stdout, sys.stderr
    checks.run(1, lambda: logging.getLogger("x").info("hello"))
    assert (root.handlers, root.level) == (handlers, level)
    assert (sys.stdout, sys.stderr) == (out, err)


def test_sqlalchemy_is_captured_from_info_up_and_its_level_restored():
    """SQLAlchemy's statements (INFO, where a parameter could hold a secret) are scanned; its row-by-row
    DEBUG records, which made a check reading 150,000 rows five times slower, are not produced."""
    sa = logging.getLogger("sqlalchemy")
    before = sa.level

    def fn(url):
        engine_log = logging.getLogger("sqlalchemy.engine.Engine")
        assert not engine_log.isEnabledFor(logging.DEBUG)
        engine_log.info("[generated] %s", url)  # as echo=True logs a statement's parameters
        return "ok"

    with pytest.raises(CheckFailed, match="printed or logged a secret"):
        checks.run(2, fn, SECRET_URL, secrets=checks.secrets_in(SECRET_URL))
    assert sa.level == before


def test_captures_nest_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    out = sys.stdout

    def fn(i):
        print("call", i)
        return i

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(lambda i: checks.run(1, fn, i), range(40))) == list(range(40))
    assert sys.stdout is out


def test_learner_env_tags_the_sessions_of_every_driver():
    tag = checks.new_tag(3)
    with checks.learner_env(tag) as url, checks.check_connect(autocommit=True) as observer:
        assert os.environ["DATABASE_URL"] == url
        with psycopg.connect(os.environ["DATABASE_URL"]) as a:
            pids = {a.info.backend_pid}

            async def via_asyncpg():
                conn = await asyncpg.connect(os.environ["DATABASE_URL"])
                try:
                    pids.add(conn.get_server_pid())
                    return {r["pid"] for r in checks.sessions_of(observer, tag)}
                finally:
                    await conn.close()

            engine = create_engine(make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg"))
            with engine.connect() as c:
                pids.add(c.execute(text("SELECT pg_backend_pid()")).scalar_one())
                seen = asyncio.run(via_asyncpg())
            engine.dispose()
        assert pids <= seen and len(pids) == 3
        assert checks.wait_for_sessions_to_end(observer, tag) == []
    assert os.environ["DATABASE_URL"] != url


def test_process_sessions_sees_this_processs_connections_only():
    with checks.check_connect(autocommit=True) as observer, psycopg.connect(os.environ["DATABASE_URL"]) as mine:
        found = checks.process_sessions(observer)
        assert found is not None, "the course server is on TCP: sessions can be told apart by client port"
        assert mine.info.backend_pid in {r["pid"] for r in found}
        assert observer.info.backend_pid not in {r["pid"] for r in found}


def test_disorder_breaks_the_id_order_of_a_scan():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 500) g")
        assert checks.physical_order(conn, "t", "id") == list(range(1, 501))
        checks.disorder(conn, "t")
        order = checks.physical_order(conn, "t", "id")
        assert sorted(order) == list(range(1, 501)) and order != sorted(order)
        assert order.index(1) > order.index(300), "the rows moved are those that would come first"
        conn.rollback()


def test_best_time_takes_the_shortest_run():
    times = iter([0.05, 0.01, 0.03])
    assert checks.best_time(lambda: time.sleep(next(times)), runs=3) < 0.03
    assert checks.slower_than(0.5, 0.1, 3) and not checks.slower_than(0.2, 0.1, 3)


def test_with_params_keeps_the_url_and_sets_the_parameter():
    url = checks.with_params("postgresql://u:p%40@h:5/db?sslmode=prefer&application_name=old", application_name="a b")
    assert url == "postgresql://u:p%40@h:5/db?sslmode=prefer&application_name=a%20b"
    assert "application_name='a b'" in checks.with_params("host=h dbname=db", application_name="a b")


def test_a_verdict_never_shows_the_secret_an_error_message_held():
    def fn(url):
        raise ValueError(f"cannot use {url}")

    with pytest.raises(CheckFailed, match="raised ValueError: cannot use") as caught:
        checks.run(2, fn, SECRET_URL, secrets=checks.secrets_in(SECRET_URL))
    assert "s3cret-Pa55" not in str(caught.value)


def test_trace_sees_values_pasted_into_sql_and_not_parameters():
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        trace = checks.Trace(conn)
        conn.execute("SELECT %s::int", (424242,))
        conn.execute("SELECT 737373")
        sent = trace.statements()
        if not trace.text and sys.platform != "linux":
            pytest.skip("psycopg traces libpq only on Linux")
        assert "SELECT $1::int" in sent and "SELECT 737373" in sent
        assert not any("424242" in s for s in sent)


def test_query_text_reads_strings_bytes_and_compositions():
    from psycopg import sql

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn, conn.cursor() as cur:
        assert checks.query_text(sql.SQL("SELECT {}").format(sql.Identifier("a b")), cur) == 'SELECT "a b"'
    assert checks.query_text(b"SELECT 1", None) == "SELECT 1"
    assert checks.query_text("SELECT 2", None) == "SELECT 2"
