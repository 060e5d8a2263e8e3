"""Lesson 10's checks reject plausible wrong answers, accept the right alternatives, and say what they saw.

The review check's wrong answers are the solution's module with exactly one of the nine mistakes put back (each
written to a folder of its own), and the shipped broken module itself, which must name all nine at once. Its right
alternatives are the solution rewritten with a sync pool and plain `def` endpoints, and with asyncpg.
"""

from __future__ import annotations

import hashlib
import re

import psycopg
import pytest

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import production as checks
from pgcourse.server import ROOT
from tests.service_variants import named_in, service_env, verdict, write_variant

pytestmark = pytest.mark.usefixtures("checks_database")

SOLUTION = ROOT / "solutions" / "10_production_review.py"
EXERCISE = ROOT / "exercises" / "10_production_review.py"
NINE = ["injection", "per_request", "pool_left_open", "idle_in_transaction", "returned", "no_timeout", "secret",
        "fetchall", "no_retry"]


env = service_env


def variant(tmp_path, *replacements: tuple[str, str], source=SOLUTION):
    """The solution's module with each `old` replaced by `new`, in a folder of its own."""
    return write_variant(tmp_path, source, *replacements)


def problems(path, service_env=env) -> str:
    return verdict(checks.review, path, service_env)


def named(text: str) -> list[str]:
    """The names of the problems a verdict lists, in its order."""
    return named_in(text, checks.PROBLEMS)


# --- exercise 1: masked ---------------------------------------------------------------------------------------

def masked(url):
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def masked_with_psycopg(url):
    import re as regex

    return regex.sub(r"^([a-z+]+://[^:/@]*):[^@]*@", r"\1:***@", url)


@pytest.mark.parametrize("right", [masked, masked_with_psycopg], ids=["urlsplit", "a regular expression"])
def test_masked_accepts(right, capsys):
    checks.masked_url(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (lambda url: url, "still readable"),
    (lambda url: url.replace(__import__("urllib.parse").parse.urlsplit(url).password or "\0", "***"),
     "right answer is"),
    (lambda url: url.split("@")[-1], "right answer is|still readable"),
    (lambda url: re.sub(r":[^:@/]*@", ":***@", url) if "@" in url else url + "?", "right answer is"),
    (lambda url: None, "not a str"),
], ids=["unchanged", "replace every occurrence", "drops the user", "changes a URL without password", "None"])
def test_masked_rejects(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.masked_url(wrong)
    assert "Hint:" in str(caught.value)


def test_masked_must_not_print_the_password():
    def chatty(url):
        print("masking", url)
        return masked(url)

    with pytest.raises(CheckFailed, match="printed or logged a secret"):
        checks.masked_url(chatty)


# --- exercise 2: run_serializable ------------------------------------------------------------------------------

def run_serializable(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return work(conn)
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise


def run_serializable_by_level(conn, work, attempts):
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    failure = None
    for _ in range(attempts):
        try:
            with conn.transaction():
                return work(conn)
        except psycopg.errors.SerializationFailure as exc:
            failure = exc
    raise failure


@pytest.mark.parametrize("right", [run_serializable, run_serializable_by_level],
                         ids=["SET TRANSACTION", "isolation_level"])
def test_run_serializable_accepts(right, capsys):
    checks.run_serializable(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


def no_retry(conn, work, attempts):
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        return work(conn)


def read_committed(conn, work, attempts):
    with conn.transaction():
        return work(conn)


def unbounded(conn, work, attempts):
    while True:
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return work(conn)
        except psycopg.errors.SerializationFailure:
            continue


def swallows(conn, work, attempts):
    for _ in range(attempts):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return work(conn)
        except psycopg.errors.SerializationFailure:
            pass
    return None


def retries_everything(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return work(conn)
        except Exception:
            if attempt == attempts:
                raise


def no_transaction(conn, work, attempts):
    conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    for attempt in range(1, attempts + 1):
        try:
            result = work(conn)
            conn.commit()
            return result
        except psycopg.errors.SerializationFailure:
            conn.rollback()
            if attempt == attempts:
                raise
            conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")


@pytest.mark.parametrize("wrong, said", [
    (no_retry, "called work 1 time"),
    (read_committed, "not serializable"),
    (unbounded, "did not finish|called work"),
    (swallows, "try exactly 3 times, then raise"),
    (retries_everything, "error that is not a serialization failure"),
    (no_transaction, "still in a transaction"),
], ids=["no retry", "read committed", "no bound", "swallows the last failure", "retries every error",
        "an application error left in its transaction"])
def test_run_serializable_rejects(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.run_serializable(wrong)
    assert "Hint:" in str(caught.value)


def test_run_serializable_stub_is_not_done():
    def stub(conn, work, attempts):
        raise NotImplementedError("Exercise 2: write your code here")

    with pytest.raises(NotDone):
        checks.run_serializable(stub)


# --- exercise 3: the shipped files -----------------------------------------------------------------------------

def test_the_shipped_broken_module_is_the_one_the_check_knows():
    assert hashlib.sha256(EXERCISE.read_bytes()).hexdigest() == checks.ORIGINAL_SHA256


def test_the_unchanged_module_is_not_done_and_names_its_first_mistake():
    with pytest.raises(NotDone, match="have not changed 10_production_review.py yet.*SQL built from"):
        checks.review(EXERCISE, env)


def test_the_solution_passes(capsys):
    checks.review(SOLUTION, env)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_the_broken_module_once_touched_names_all_nine_mistakes_at_once(tmp_path):
    text = problems(variant(tmp_path, ('"""An accounts service', '"""Touched. An accounts service'), source=EXERCISE))
    assert named(text) == NINE, text


# --- exercise 3: one mistake put back ----------------------------------------------------------------------------

SEARCH = """    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts"
                             " WHERE owner ILIKE '%%' || %s || '%%' ORDER BY id LIMIT 20", (owner,))"""
DEPENDENCY = """    async with request.app.state.pool.connection() as conn:
        yield conn"""
RETURNS = ("async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
           "async def get_conn(request: Request) -> psycopg.AsyncConnection:")
CLOSE = """    try:
        yield
    finally:
        await pool.close()  # Lesson 09 part 3: at shutdown every session ends properly."""
ACCOUNT = """async def account(account_id: int, conn: Conn):"""
OPTIONS = """, open=False,
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})"""
LOGGED = """log.info("pool opened on %s", masked(DATABASE_URL))"""
EXPORT = """        async with request.app.state.pool.connection() as conn, conn.cursor(name="export") as cur:
            await cur.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id", (before_id,))
            while rows := await cur.fetchmany(5000):
                yield "".join(f"{i},{c},{k}\\n" for i, c, k in rows)"""
RETRY = """    for attempt in range(1, ATTEMPTS + 1):"""
RETRIED = """        except psycopg.errors.SerializationFailure:
            if attempt == ATTEMPTS:
                raise"""

PUT_BACK = {
    "injection": [(SEARCH, """    cur = await conn.execute(f"SELECT id, owner, balance FROM exercise10.accounts"
                             f" WHERE owner ILIKE '%{owner}%' ORDER BY id LIMIT 20")""")],
    "per_request": [(DEPENDENCY, """    async with await psycopg.AsyncConnection.connect(
            DATABASE_URL, connect_timeout=2, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}") as conn:
        yield conn""")],
    "pool_left_open": [(CLOSE, "    yield")],
    "idle_in_transaction": [(ACCOUNT, """async def account(account_id: int):
    global reader
    if reader is None or reader.closed:
        reader = await psycopg.AsyncConnection.connect(
            DATABASE_URL, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    conn = reader"""), ("class Transfer(BaseModel):", "reader = None\n\n\nclass Transfer(BaseModel):")],
    "returned": [(DEPENDENCY, "    return await request.app.state.pool.getconn()"), RETURNS],
    "no_timeout": [(OPTIONS, ", open=False)")],
    "secret": [(LOGGED, """log.info("pool opened on %s", DATABASE_URL)""")],
    "fetchall": [(EXPORT, """        async with request.app.state.pool.connection() as conn:
            cur = await conn.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id",
                                     (before_id,))
            rows = await cur.fetchall()
        yield "".join(f"{i},{c},{k}\\n" for i, c, k in rows)""")],
    "no_retry": [(RETRY, "    for attempt in range(1, 2):"), (RETRIED, """        except psycopg.errors.SerializationFailure:
            raise""")],
}


@pytest.mark.parametrize("mistake", NINE)
def test_one_mistake_put_back_is_named_alone(tmp_path, mistake):
    text = problems(variant(tmp_path, *PUT_BACK[mistake]))
    assert named(text) == [mistake], text


def test_a_pool_without_a_short_checkout_timeout_is_named(tmp_path):
    text = problems(variant(tmp_path, ("max_size=POOL_MAX, timeout=POOL_TIMEOUT,", "max_size=POOL_MAX,")))
    assert named(text) == ["no_timeout"], text
    assert "while the database did not answer" in text


def test_a_retry_without_a_bound_is_named(tmp_path):
    text = problems(variant(tmp_path, (RETRY, "    for attempt in itertools.count(1):"),
                            ("import asyncio\n", "import asyncio\nimport itertools\n"),
                            ("            if attempt == ATTEMPTS:\n                raise\n", "")))
    # Past 50 tries within 6 s it is named a retry without a bound; with its pauses doubling it may not get there
    assert named(text) in (["no_retry"], ["slow_retry"]), text
    assert "without a bound" in text


# --- exercise 3: right alternatives, and the environment ------------------------------------------------------------

SYNC = [
    ("from psycopg_pool import AsyncConnectionPool, PoolTimeout", "from psycopg_pool import ConnectionPool, PoolTimeout"),
    ("import asyncio\n", "import time\n"),
    ("await asyncio.sleep(", "time.sleep("),
    ("pool = AsyncConnectionPool(", "pool = ConnectionPool("),
    ("await pool.open(wait=True)", "pool.open(wait=True)"),
    ("await pool.close()", "pool.close()"),
    ("async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
     "def get_conn(request: Request) -> Iterator[psycopg.Connection]:"),
    ("from collections.abc import AsyncIterator", "from collections.abc import AsyncIterator, Iterator"),
    ("async with request.app.state.pool.connection() as conn:\n        yield conn",
     "with request.app.state.pool.connection() as conn:\n        yield conn"),
    ("await conn.execute(", "conn.execute("),
    ("await cur.fetchall()", "cur.fetchall()"),
    ("await cur.fetchone()", "cur.fetchone()"),
    ("async with conn.transaction()", "with conn.transaction()"),
    ("""    async def lines() -> AsyncIterator[str]:
        yield "id,customer_id,kind\\n"
        async with request.app.state.pool.connection() as conn, conn.cursor(name="export") as cur:
            await cur.execute(""", """    def lines() -> Iterator[str]:
        yield "id,customer_id,kind\\n"
        with request.app.state.pool.connection() as conn, conn.cursor(name="export") as cur:
            cur.execute("""),
    ("while rows := await cur.fetchmany(5000):", "while rows := cur.fetchmany(5000):"),
] + [(f"async def {name}(", f"def {name}(") for name in ("health", "search", "account", "transfer", "export")]

ASYNCPG = [
    ("import psycopg\n", "import asyncpg\n"),
    ("from psycopg_pool import AsyncConnectionPool, PoolTimeout\n", ""),
    ("""    pool = AsyncConnectionPool(DATABASE_URL, min_size=1, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False,
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})
    await pool.open(wait=True)""", """    pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=POOL_MAX,
                                     server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS)})"""),
    ("async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
     "async def get_conn(request: Request) -> AsyncIterator[asyncpg.Connection]:"),
    ("async with request.app.state.pool.connection() as conn:\n        yield conn",
     "async with request.app.state.pool.acquire(timeout=POOL_TIMEOUT) as conn:\n        yield conn"),
    ("Conn = Annotated[psycopg.AsyncConnection, Depends(get_conn)]", "Conn = Annotated[asyncpg.Connection, Depends(get_conn)]"),
    ("""@app.exception_handler(PoolTimeout)
@app.exception_handler(psycopg.errors.QueryCanceled)
@app.exception_handler(psycopg.errors.SerializationFailure)""", """@app.exception_handler(TimeoutError)
@app.exception_handler(asyncpg.exceptions.QueryCanceledError)
@app.exception_handler(asyncpg.exceptions.SerializationError)"""),
    ("""    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts"
                             " WHERE owner ILIKE '%%' || %s || '%%' ORDER BY id LIMIT 20", (owner,))
    return {"accounts": [account_json(row) for row in await cur.fetchall()]}""",
     """    rows = await conn.fetch("SELECT id, owner, balance FROM exercise10.accounts"
                            " WHERE owner ILIKE '%' || $1 || '%' ORDER BY id LIMIT 20", owner)
    return {"accounts": [account_json(row) for row in rows]}"""),
    ("""    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts WHERE id = %s", (account_id,))
    row = await cur.fetchone()""", """    row = await conn.fetchrow("SELECT id, owner, balance FROM exercise10.accounts WHERE id = $1", account_id)"""),
    ("""            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                cur = await conn.execute("SELECT balance FROM exercise10.accounts WHERE id = %s", (t.from_id,))
                row = await cur.fetchone()""", """            async with conn.transaction(isolation="serializable"):
                row = await conn.fetchrow("SELECT balance FROM exercise10.accounts WHERE id = $1", t.from_id)"""),
    ("""                await conn.execute("UPDATE exercise10.accounts SET balance = balance - %s WHERE id = %s",
                                   (t.amount, t.from_id))
                await conn.execute("UPDATE exercise10.accounts SET balance = balance + %s WHERE id = %s",
                                   (t.amount, t.to_id))""", """                await conn.execute("UPDATE exercise10.accounts SET balance = balance - $1 WHERE id = $2",
                                   t.amount, t.from_id)
                await conn.execute("UPDATE exercise10.accounts SET balance = balance + $1 WHERE id = $2",
                                   t.amount, t.to_id)"""),
    ("except psycopg.errors.SerializationFailure:", "except asyncpg.exceptions.SerializationError:"),
    ("""        async with request.app.state.pool.connection() as conn, conn.cursor(name="export") as cur:
            await cur.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id", (before_id,))
            while rows := await cur.fetchmany(5000):
                yield "".join(f"{i},{c},{k}\\n" for i, c, k in rows)""",
     """        async with request.app.state.pool.acquire(timeout=POOL_TIMEOUT) as conn, conn.transaction():
            cur = await conn.cursor("SELECT id, customer_id, kind FROM events WHERE id < $1 ORDER BY id", before_id)
            while rows := await cur.fetch(5000):
                yield "".join(f"{i},{c},{k}\\n" for i, c, k in rows)"""),
]


@pytest.mark.parametrize("replacements", [SYNC, ASYNCPG], ids=["sync pool and plain def endpoints", "asyncpg"])
def test_right_alternatives_pass(tmp_path, replacements, capsys):
    checks.review(variant(tmp_path, *replacements), env)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_the_environment_must_pass_the_url_on():
    with pytest.raises(CheckFailed, match="did not pass on the URL"):
        checks.review(SOLUTION, lambda url: {"DATABASE_URL": url.split("?")[0]})


def test_a_stub_environment_is_not_done():
    def stub(database_url):
        raise NotImplementedError("Exercise 3: write your code here")

    with pytest.raises(NotDone):
        checks.review(SOLUTION, stub)


def test_a_module_that_does_not_start_is_reported(tmp_path):
    with pytest.raises(CheckFailed, match="did not start"):
        checks.review(variant(tmp_path, ('log = logging.getLogger("uvicorn.error")',
                                         'raise RuntimeError("broken on import")')), env)


SQLALCHEMY = '''"""The accounts service fixed with SQLAlchemy's async engine (psycopg underneath)."""

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

DATABASE_URL = os.environ["DATABASE_URL"]
log = logging.getLogger("uvicorn.error")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=4,
                                 max_overflow=0, pool_timeout=2, connect_args={"options": "-c statement_timeout=1000"})
    app.state.engine = engine
    log.info("engine for %s", engine.url)  # SQLAlchemy's URL prints its password as ***
    try:
        yield
    finally:
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def get_conn(request: Request) -> AsyncIterator[AsyncConnection]:
    async with request.app.state.engine.connect() as conn:
        yield conn


Conn = Annotated[AsyncConnection, Depends(get_conn)]


@app.exception_handler(PoolTimeout)
@app.exception_handler(DBAPIError)
async def failed(request: Request, exc: Exception) -> JSONResponse:
    busy = isinstance(getattr(exc, "orig", exc), (PoolTimeout, psycopg.errors.QueryCanceled,
                                                  psycopg.errors.SerializationFailure))
    return JSONResponse({"error": type(exc).__name__}, status_code=503 if busy else 500)


class Transfer(BaseModel):
    from_id: int
    to_id: int
    amount: int


def account_json(row) -> dict:
    return {"id": row.id, "owner": row.owner, "balance": str(row.balance)}


@app.get("/health")
async def health(conn: Conn):
    await conn.execute(text("SELECT 1"))
    return {"status": "ok"}


@app.get("/accounts/search")
async def search(owner: str, conn: Conn):
    result = await conn.execute(text("SELECT id, owner, balance FROM exercise10.accounts"
                                     " WHERE strpos(lower(owner), lower(:owner)) > 0 ORDER BY id LIMIT 20"),
                                {"owner": owner})
    return {"accounts": [account_json(row) for row in result]}


@app.get("/accounts/{account_id}")
async def account(account_id: int, conn: Conn):
    row = (await conn.execute(text("SELECT id, owner, balance FROM exercise10.accounts WHERE id = :id"),
                              {"id": account_id})).first()
    if row is None:
        return JSONResponse({"error": "no such account"}, status_code=404)
    return account_json(row)


@app.post("/transfers", status_code=201)
async def transfer(t: Transfer, conn: Conn):
    for attempt in range(1, 6):
        try:
            async with conn.begin():
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
                balance = (await conn.execute(text("SELECT balance FROM exercise10.accounts WHERE id = :id"),
                                              {"id": t.from_id})).scalar()
                if balance is None or balance < t.amount:
                    return JSONResponse({"error": "insufficient funds"}, status_code=409)
                await conn.execute(text("UPDATE exercise10.accounts SET balance = balance - :a WHERE id = :id"),
                                   {"a": t.amount, "id": t.from_id})
                await conn.execute(text("UPDATE exercise10.accounts SET balance = balance + :a WHERE id = :id"),
                                   {"a": t.amount, "id": t.to_id})
            return {"from_id": t.from_id, "to_id": t.to_id, "amount": t.amount}
        except DBAPIError as exc:
            if not isinstance(exc.orig, psycopg.errors.SerializationFailure) or attempt == 5:
                raise
            await asyncio.sleep(random.uniform(0, 0.02))


@app.get("/events/export")
async def export(before_id: int, request: Request):
    async def lines() -> AsyncIterator[str]:
        yield "id,customer_id,kind\\n"
        async with request.app.state.engine.connect() as conn:
            result = await conn.stream(text("SELECT id, customer_id, kind FROM events WHERE id < :b ORDER BY id"),
                                       {"b": before_id})
            async for rows in result.partitions(5000):
                yield "".join(f"{i},{c},{k}\\n" for i, c, k in rows)

    return StreamingResponse(lines(), media_type="text/csv")
'''


def test_a_rewrite_with_sqlalchemy_passes(tmp_path, capsys):
    path = tmp_path / "10_production_review.py"
    path.write_text(SQLALCHEMY)
    checks.review(path, lambda url: {"DATABASE_URL": url})
    assert "Exercise 3 passed" in capsys.readouterr().out


# --- exercise 3: the holes an adversary found, closed -------------------------------------------------------------

TRANSFER_BODY = """            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                cur = await conn.execute("SELECT balance FROM exercise10.accounts WHERE id = %s", (t.from_id,))
                row = await cur.fetchone()
                if row is None or row[0] < t.amount:
                    return JSONResponse({"error": "insufficient funds"}, status_code=409)
                await conn.execute("UPDATE exercise10.accounts SET balance = balance - %s WHERE id = %s",
                                   (t.amount, t.from_id))
                await conn.execute("UPDATE exercise10.accounts SET balance = balance + %s WHERE id = %s",
                                   (t.amount, t.to_id))"""
AUTOCOMMIT = (OPTIONS, OPTIONS.replace('"}', '", "autocommit": True}'))
PER_ROW_STREAM = (EXPORT, """        async with request.app.state.pool.connection() as conn:
            async for i, c, k in conn.cursor().stream(
                    "SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id", (before_id,), size=1000):
                yield f"{i},{c},{k}\\n\"""")


def test_autocommit_with_transactions_and_an_export_of_one_line_per_yield_pass(tmp_path, capsys):
    """Right answers the check once failed: one small chunk per row takes 30 to 45 s on a busy 2-core machine."""
    checks.review(variant(tmp_path, AUTOCOMMIT, PER_ROW_STREAM), env)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_no_transaction_a_lost_connection_and_an_export_that_does_not_stream_are_named(tmp_path):
    """Autocommit and no transaction block (SET TRANSACTION does nothing), a dependency whose `putconn` a failing
    request skips, and a client-side cursor read with fetchmany (libpq holds the whole result first)."""
    unwrapped = "\n".join(line[4:] if line.startswith("                ") else line
                          for line in TRANSFER_BODY.splitlines()[1:])
    text = problems(variant(
        tmp_path, AUTOCOMMIT, (TRANSFER_BODY, unwrapped),
        (DEPENDENCY, """    pool = request.app.state.pool
    conn = await pool.getconn()
    yield conn
    await pool.putconn(conn)"""),
        (EXPORT.splitlines()[0] + "\n" + EXPORT.splitlines()[1], """        async with request.app.state.pool.connection() as conn:
            cur = await conn.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id",
                                     (before_id,))""")))
    assert {"returned", "not_streamed", "no_transaction"} <= set(named(text)), text
    assert "committed separately" in text and "NUL byte" in text and "% of the result" in text


def test_a_timeout_only_on_locks_a_whole_answer_at_once_and_a_false_409_are_named(tmp_path):
    text = problems(variant(
        tmp_path, (OPTIONS, """, open=False,
                               kwargs={"options": "-c lock_timeout=1000"})"""),
        (EXPORT + "\n\n    return StreamingResponse(lines(), media_type=\"text/csv\")", EXPORT + """

    body = [chunk async for chunk in lines()]
    return PlainTextResponse("".join(body), media_type="text/csv")"""),
        ("from fastapi.responses import JSONResponse, StreamingResponse",
         "from fastapi.responses import JSONResponse, PlainTextResponse"),
        (RETRIED, """        except psycopg.errors.SerializationFailure:
            if attempt == ATTEMPTS:
                return JSONResponse({"error": "insufficient funds"}, status_code=409)""")))
    assert named(text) == ["no_timeout", "not_streamed", "contract"], text
    assert "statement_timeout = 0 (none)" in text and "something false" in text


def test_a_slow_retry_and_a_password_in_conninfo_are_named_as_what_they_are(tmp_path):
    text = problems(variant(
        tmp_path, ("await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))", "await asyncio.sleep(0.05 * 2**attempt)"),
        (LOGGED, LOGGED + "\n    log.info(\"conninfo %s\", pool.conninfo)")))
    assert named(text) == ["secret", "slow_retry"], text
    assert "conninfo postgresql://" in text and ":***@" in text and "in this line" in text


def test_an_export_past_the_limit_is_named_slow_with_its_time(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "EXPORT_LIMIT", 0.2)
    text = problems(SOLUTION)
    assert named(text) == ["slow_export"], text
    assert "still sending after" in text and "contract" not in text
