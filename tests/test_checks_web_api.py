"""Lesson 09's checks reject plausible wrong answers, accept the right alternatives, and say what they saw.

The service check's wrong answers are small variants of the solution's service file (written to a folder of
their own), each leaving one problem in, and the shipped broken file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import psycopg
import pytest

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import web_api as checks
from pgcourse.server import ROOT
from tests.service_variants import named_in, service_env, verdict, write_variant

pytestmark = pytest.mark.usefixtures("checks_database")

SOLUTION = ROOT / "solutions" / "09_web_api_service.py"
EXERCISE = ROOT / "exercises" / "09_web_api_service.py"


env = service_env


def variant(tmp_path, *replacements: tuple[str, str], source=SOLUTION):
    """The solution's file with each `old` replaced by `new`, in a folder of its own."""
    return write_variant(tmp_path, source, *replacements)


def problems(path, service_env=env) -> str:
    return verdict(checks.service, path, service_env)


def named(text: str) -> list[str]:
    """The names of the problems a verdict lists, in its order."""
    return named_in(text, checks.PROBLEMS)


# --- exercise 1 ----------------------------------------------------------------------------------------

def pool_max(connection_limit, workers, reserved):
    size = (connection_limit - reserved) // workers
    if size < 1:
        raise ValueError("no pool fits")
    return size


def test_pool_max_accepts_the_right_answer(capsys):
    checks.pool_max(pool_max)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (lambda limit, workers, reserved: (limit - reserved) / workers, "not an int"),
    (lambda limit, workers, reserved: round((limit - reserved) / workers), "right answer is"),
    (lambda limit, workers, reserved: max(1, (limit - reserved) // workers), "raise ValueError"),
    (lambda limit, workers, reserved: (limit - reserved) // workers, "raise ValueError"),
    (lambda limit, workers, reserved: limit // workers - reserved, "right answer is"),
    (lambda limit, workers, reserved: (limit - reserved - 1) // workers or 1, "right answer is"),
], ids=["float", "rounded", "never raises", "zero instead of raising", "reserved per worker", "off by one"])
def test_pool_max_rejects(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.pool_max(wrong)


def test_pool_max_stub_is_not_done():
    def stub(*args):
        raise NotImplementedError("Exercise 1: write your code here")

    with pytest.raises(NotDone):
        checks.pool_max(stub)


# --- exercise 2 ----------------------------------------------------------------------------------------

async def get_conn(request):
    async with request.app.state.pool.connection() as conn:
        yield conn


async def get_conn_finally(request):
    pool = request.app.state.pool
    conn = await pool.getconn()
    try:
        yield conn
    finally:
        await pool.putconn(conn)


@pytest.mark.parametrize("right", [get_conn, get_conn_finally], ids=["async with", "try/finally"])
def test_dependency_accepts(right, capsys):
    checks.dependency(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


async def returns(request):
    return await request.app.state.pool.getconn()


async def no_finally(request):
    pool = request.app.state.pool
    conn = await pool.getconn()
    yield conn
    await pool.putconn(conn)


async def swallows(request):
    async with request.app.state.pool.connection() as conn:
        with contextlib.suppress(Exception):
            yield conn


async def own_connection(request):
    async with await psycopg.AsyncConnection.connect(request.app.state.pool.conninfo) as conn:
        yield conn


def sync_generator(request):
    yield None


async def commits_failed_work(request):
    pool = request.app.state.pool
    conn = await pool.getconn()
    try:
        yield conn
    finally:
        await conn.commit()  # a failed request's work committed too
        await pool.putconn(conn)


async def autocommit(request):
    async with request.app.state.pool.connection() as conn:
        await conn.set_autocommit(True)
        yield conn


async def never_yields(request):
    async with request.app.state.pool.connection():
        await asyncio.sleep(100)
    yield None


@pytest.mark.parametrize("wrong, said", [
    (returns, "not an async generator"),
    (no_finally, "never went back to the pool"),
    (swallows, "swallowed the exception"),
    (own_connection, "opened itself"),
    (sync_generator, "not an async generator"),
    (commits_failed_work, "its work was committed"),
    (autocommit, "its work was committed"),
    (never_yields, "did not yield a connection within 4 s"),
], ids=["return", "yield without finally", "swallows the error", "own connection", "sync generator",
        "commits a failed request's work", "autocommit", "never yields"])
def test_dependency_rejects(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.dependency(wrong)
    assert "Hint:" in str(caught.value)


def test_dependency_stub_is_not_done():
    async def stub(request):
        raise NotImplementedError("Exercise 2: write your code here")

    with pytest.raises(NotDone):
        checks.dependency(stub)


# --- exercise 3: the shipped files -----------------------------------------------------------------------

def test_the_shipped_broken_file_is_the_one_the_check_knows():
    assert hashlib.sha256(EXERCISE.read_bytes()).hexdigest() == checks.ORIGINAL_SHA256


def test_the_unchanged_file_is_not_done_and_names_its_first_problem():
    with pytest.raises(NotDone, match="have not changed 09_web_api_service.py yet.*a new connection for every"):
        checks.service(EXERCISE, env)


def test_the_solution_passes(capsys):
    checks.service(SOLUTION, env)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_the_broken_file_once_touched_shows_each_of_its_problems(tmp_path):
    text = problems(variant(tmp_path, ('"""A wishlist', '"""Touched. A wishlist'), source=EXERCISE))
    assert named(text) == ["per_request", "returned", "blocked_loop", "injection", "no_timeout", "errors_hidden"]


# --- exercise 3: one problem left ---------------------------------------------------------------------

SEARCH = """        "SELECT id, name, price FROM products WHERE name ILIKE '%%' || %s || '%%' ORDER BY id LIMIT 20", (name,))"""
POOL = """    pool = AsyncConnectionPool(DATABASE_URL, min_size=1, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False,
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})"""
DEPENDENCY = """    async with request.app.state.pool.connection() as conn:
        yield conn"""
ADD = """    async with conn.transaction():  # Lesson 04: committed when the block ends, rolled back if it raises.
        await conn.execute(
            "INSERT INTO exercise09.wishlist (customer_id, product_id, quantity) VALUES (%s, %s, %s)"
            " ON CONFLICT (customer_id, product_id) DO UPDATE SET quantity = excluded.quantity",
            (customer_id, wish.product_id, wish.quantity))"""
CANCELED_HANDLER = """@app.exception_handler(psycopg.errors.QueryCanceled)
async def too_slow(request: Request, exc: psycopg.Error) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__}, status_code=503)"""

# The solution made synchronous: psycopg's ConnectionPool, a sync generator dependency (FastAPI runs it in its
# thread pool), and endpoints that call the sync driver.
SYNC = [
    ("from psycopg_pool import AsyncConnectionPool, PoolTimeout", "from psycopg_pool import ConnectionPool, PoolTimeout"),
    ("pool = AsyncConnectionPool(", "pool = ConnectionPool("),
    ("await pool.open(wait=True)", "pool.open(wait=True)"),
    ("await pool.close()", "pool.close()"),
    ("async def get_conn(", "def get_conn("),
    ("async with request.app.state.pool.connection()", "with request.app.state.pool.connection()"),
    ("await conn.execute(", "conn.execute("),
    ("await cur.fetchall()", "cur.fetchall()"),
    ("async with conn.transaction()", "with conn.transaction()"),
]
PLAIN_DEF = [(f"async def {name}(", f"def {name}(") for name in ("health", "search", "wishlist", "add")]


@pytest.mark.parametrize("replacements, left", [
    # independent problems share one run of the service (each run takes 10-20 s)
    ([(SEARCH, """        f"SELECT id, name, price FROM products WHERE name ILIKE '%{name}%' ORDER BY id LIMIT 20")"""),
      (POOL, POOL.replace(""",
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})""", ")")),
      ("        await pool.close()  # Lesson 09 part 3: at shutdown every connection ends properly.\n", ""),
      ('    log.info("pool opened")', '    log.info("pool opened on %s", DATABASE_URL)')],
     ["injection", "no_timeout", "pool_left_open", "secret"]),
    (SYNC, ["blocked_loop"]),
    ([(DEPENDENCY, """    pool = request.app.state.pool
    conn = await pool.getconn()
    yield conn
    await pool.putconn(conn)""")], ["kept_on_error"]),
    ([(DEPENDENCY, """    async with AsyncConnectionPool(DATABASE_URL, min_size=1, max_size=1,
                                   kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}) as pool:
        async with pool.connection() as conn:
            yield conn""")], ["per_request"]),
    ([(DEPENDENCY, """    async with await psycopg.AsyncConnection.connect(
            DATABASE_URL, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}") as conn:
        yield conn""")], ["per_request"]),
    ([(DEPENDENCY, """    conn = await psycopg.AsyncConnection.connect(
        DATABASE_URL, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    return conn"""), ("async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
                      "async def get_conn(request: Request) -> psycopg.AsyncConnection:")],
     ["per_request", "returned"]),
], ids=["f-string search, no statement timeout, pool not closed, password logged", "sync driver in async def",
        "yield without finally", "a pool per request, closed", "a connection per request, closed",
        "a connection per request, returned"])
def test_one_problem_left_is_named(tmp_path, replacements, left):
    text = problems(variant(tmp_path, *replacements))
    assert named(text) == left, text


def test_a_dependency_that_returns_a_pooled_connection_runs_the_pool_dry(tmp_path):
    text = problems(variant(tmp_path, (DEPENDENCY, "    return await request.app.state.pool.getconn()"), (
        "async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
        "async def get_conn(request: Request) -> psycopg.AsyncConnection:")))
    assert named(text) == ["not_given_back"], text
    assert "The check stopped there" in text


def test_a_timeout_answered_500_and_a_catch_all_answering_success(tmp_path):
    text = problems(variant(tmp_path, (CANCELED_HANDLER, ""), (ADD, "    try:\n" + "\n".join(
        "    " + line for line in ADD.splitlines()) + "\n    except Exception:\n        return {}")))
    assert named(text) == ["timeout_status", "errors_hidden"], text
    assert "answered 500" in text and "503" in text


RETURNS = ("async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:",
           "async def get_conn(request: Request) -> psycopg.AsyncConnection:")
HEALTH = """async def health(conn: Conn):
    await conn.execute("SELECT 1")"""
SEARCH_DEF = "async def search(name: str, conn: Conn):\n"
WISHLIST_DEF = "async def wishlist(customer_id: int, conn: Conn):\n"


def test_a_connection_returned_from_inside_its_block_is_named_not_waited_for(tmp_path):
    # The connection goes back to the pool while the endpoint still uses it: its session stays idle in a
    # transaction, holding a lock on the table, and the check's own LOCK TABLE must not wait for it.
    text = problems(variant(tmp_path, (DEPENDENCY, DEPENDENCY.replace("yield conn", "return conn")), RETURNS))
    assert named(text) == ["idle_in_transaction"], text


def test_a_sleep_in_one_endpoint_and_a_health_check_without_the_database(tmp_path):
    text = problems(variant(tmp_path, ("import logging\n", "import logging\nimport time\n"),
                            (SEARCH_DEF, SEARCH_DEF + "    time.sleep(0.2)\n"),
                            (HEALTH, "async def health():")))
    assert named(text) == ["blocked_loop", "health_blind"], text
    assert "while GET /products/search waited" in text


def test_a_timeout_in_one_endpoint_only_and_a_pool_over_the_limit_from_startup(tmp_path):
    text = problems(variant(tmp_path, (POOL, """    pool = AsyncConnectionPool(DATABASE_URL, min_size=10, max_size=10, timeout=POOL_TIMEOUT, open=False)"""),
                            (WISHLIST_DEF, WISHLIST_DEF + '    await conn.execute("SET LOCAL statement_timeout = 1000")\n')))
    assert named(text) == ["too_many", "no_timeout"], text
    assert "GET /products/search, whose query waited" in text and "held 10 connections" in text


def test_a_sync_connection_in_health_alone_a_timeout_too_short_and_a_pool_too_large(tmp_path):
    text = problems(variant(tmp_path, (HEALTH, """async def health():
    with psycopg.connect(DATABASE_URL) as health_conn:
        health_conn.execute("SELECT 1")""")),
                    lambda url: {**env(url), "POOL_MAX": "50", "STATEMENT_TIMEOUT_MS": "100"})
    # its connection per health check is counted too: as more than the role allows, or as one per request
    assert {"blocked_loop", "short_timeout"} <= set(named(text)) and {"too_many", "per_request"} & set(named(text))
    assert "while GET /health waited" in text


def test_a_pool_that_waits_too_little_is_not_called_dry(tmp_path):
    text = problems(SOLUTION, lambda url: {**env(url), "POOL_MAX": "1", "POOL_TIMEOUT": "0.001"})
    assert named(text)[0] == "pool_wait" and not {"not_given_back", "kept_on_error"} & set(named(text)), text


# --- exercise 3: right alternatives, and the environment ------------------------------------------------

@pytest.mark.parametrize("replacements", [
    SYNC + PLAIN_DEF,
    [('"-c statement_timeout={STATEMENT_TIMEOUT_MS}"', '"-c lock_timeout={STATEMENT_TIMEOUT_MS}"'),
     ("@app.exception_handler(psycopg.errors.QueryCanceled)", "@app.exception_handler(psycopg.errors.LockNotAvailable)"),
     ("status_code=503)\n\n\n@app.exception_handler(psycopg.errors.IntegrityError)",
      "status_code=504)\n\n\n@app.exception_handler(psycopg.errors.IntegrityError)")],
], ids=["sync pool and plain def endpoints", "lock_timeout answered 504"])
def test_right_alternatives_pass(tmp_path, replacements, capsys):
    checks.service(variant(tmp_path, *replacements), env)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_the_environment_must_pass_the_url_on():
    with pytest.raises(CheckFailed, match="did not pass on the URL"):
        checks.service(SOLUTION, lambda url: {"DATABASE_URL": url.split("?")[0], "POOL_MAX": "4"})
    with pytest.raises(CheckFailed, match="not strings \\('POOL_MAX': int\\)"):
        checks.service(SOLUTION, lambda url: {"DATABASE_URL": url, "POOL_MAX": 4})


def test_a_stub_environment_is_not_done():
    def stub(database_url):
        raise NotImplementedError("Exercise 3: write your code here")

    with pytest.raises(NotDone):
        checks.service(SOLUTION, stub)


def test_a_file_that_does_not_start_is_reported(tmp_path):
    with pytest.raises(CheckFailed, match="did not start"):
        checks.service(variant(tmp_path, ('log = logging.getLogger("uvicorn.error")',
                                          'raise RuntimeError("broken on import")')), env)
