"""Lesson 09, part 2: how long a request's database connection lives. Each case is a wrong endpoint
beside its right twin, on the same pools, so that one load generator can drive both.

Settings come from the environment only: DATABASE_URL, POOL_MAX (connections per pool, default 4),
POOL_TIMEOUT (seconds a request waits for a connection, default 5), THREADS (the thread pool's size; unset, anyio's
default limiter of 40 tokens: a small number shows at small scale what 40 hides), SLOW
(seconds of a slow upstream call, stream or background job, default 0.5) and WORK (seconds of a query,
default 0.02).
"""

import asyncio
import collections
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio.to_thread
import psycopg
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

DATABASE_URL = os.environ["DATABASE_URL"]  # lesson 02: settings from the environment, never literals
POOL_MAX = int(os.environ.get("POOL_MAX", "4"))
POOL_TIMEOUT = float(os.environ.get("POOL_TIMEOUT", "5"))
THREADS = os.environ.get("THREADS")  # unset: anyio's default, 40 threads
SLOW = float(os.environ.get("SLOW", "0.5"))
WORK = float(os.environ.get("WORK", "0.02"))
log = logging.getLogger("uvicorn.error")

holder: dict[int, int] = {}  # id(connection) -> the request that holds it now: what a background task meets
task_outcomes: collections.Counter = collections.Counter()
request_ids = itertools.count(1)


@asynccontextmanager
async def lifespan(app: FastAPI):
    global apool, spool
    limiter = anyio.to_thread.current_default_thread_limiter()  # the thread pool that runs `def` code
    if THREADS:
        limiter.total_tokens = int(THREADS)
    apool = AsyncConnectionPool(DATABASE_URL, min_size=POOL_MAX, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False)
    spool = ConnectionPool(DATABASE_URL, min_size=0, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False)
    await apool.open(wait=True)  # lesson 03: a pool per process, opened once
    spool.open()  # min_size=0: the sync pool connects only when the `def` endpoints ask
    log.info("pools open: %d async, up to %d sync, %g threads", POOL_MAX, POOL_MAX, limiter.total_tokens)
    yield
    await apool.close()
    await anyio.to_thread.run_sync(spool.close)
    log.info("pools closed")


app = FastAPI(lifespan=lifespan)


@app.exception_handler(PoolTimeout)
async def pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
    return JSONResponse({"error": "PoolTimeout"}, status_code=503)  # lesson 03: a bounded wait, a clear answer


@app.exception_handler(psycopg.Error)
async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__}, status_code=500)


async def async_conn():
    async with apool.connection() as conn:
        request_id = next(request_ids)
        holder[id(conn)] = request_id
        try:
            yield conn
        finally:
            holder.pop(id(conn), None)


Conn = Annotated[psycopg.AsyncConnection, Depends(async_conn)]  # returned after the response (scope "request")
EarlyConn = Annotated[psycopg.AsyncConnection, Depends(async_conn, scope="function")]  # returned before it


@app.get("/health")
async def health(conn: Conn) -> dict:
    await conn.execute("SELECT 1")
    return {"status": "ok"}


@app.get("/stats")
async def stats() -> dict:
    """The pool's counters since the last call (psycopg_pool's pop_stats) and the background tasks' findings."""
    outcomes = dict(task_outcomes)
    task_outcomes.clear()
    return {"pool": apool.pop_stats(), "sync pool": spool.pop_stats(), "tasks": outcomes}


@app.get("/orders/{customer_id}")
async def orders(customer_id: int, conn: Conn) -> dict:
    """The quick request every case runs beside the slow one: one short query."""
    cur = await conn.execute("SELECT id, pg_sleep(%s) FROM orders WHERE customer_id = %s ORDER BY id LIMIT 1",
                             (WORK, customer_id))
    return {"orders": [row[0] for row in await cur.fetchall()]}


# Case 1: `def` endpoints and a `yield` dependency on the thread pool, waiting for a pool of connections.
def sync_conn():
    with spool.connection() as conn:  # waits for a connection inside a worker thread
        yield conn


@app.get("/threads/wrong")
def threads_wrong(conn: Annotated[psycopg.Connection, Depends(sync_conn)]) -> dict:
    conn.execute("SELECT pg_sleep(%s)", (WORK,))
    return {"ok": True}


@app.get("/threads/limited")
def threads_limited(conn: Annotated[psycopg.Connection, Depends(sync_conn, max_concurrency=POOL_MAX)]) -> dict:
    conn.execute("SELECT pg_sleep(%s)", (WORK,))  # FastAPI 0.163+: the wait for a turn holds no thread
    return {"ok": True}


@app.get("/threads/async")
async def threads_async(conn: Conn) -> dict:
    await conn.execute("SELECT pg_sleep(%s)", (WORK,))  # lesson 07: no thread at all, the wait is on the loop
    return {"ok": True}


# Case 2: a connection pinned through a slow upstream call or a stream.
@app.get("/upstream/wrong")
async def upstream_wrong(conn: Conn) -> dict:
    cur = await conn.execute("SELECT count(*) FROM products")
    (count,) = await cur.fetchone()
    await asyncio.sleep(SLOW)  # the slow upstream call, while the connection waits with it
    return {"products": count}


@app.get("/upstream/right")
async def upstream_right() -> dict:
    async with apool.connection() as conn:  # borrowed for the query alone
        cur = await conn.execute("SELECT count(*) FROM products")
        (count,) = await cur.fetchone()
    await asyncio.sleep(SLOW)
    return {"products": count}


async def events(rows: list) -> AsyncIterator[str]:
    for row in rows:
        await asyncio.sleep(SLOW / len(rows))  # a server-sent event now and then
        yield f"data: {row[0]}\n\n"


@app.get("/stream/wrong")
async def stream_wrong(conn: Conn) -> StreamingResponse:
    cur = await conn.execute("SELECT id FROM products ORDER BY id LIMIT 5")
    return StreamingResponse(events(await cur.fetchall()), media_type="text/event-stream")  # held to the end


@app.get("/stream/right")
async def stream_right(conn: EarlyConn) -> StreamingResponse:
    cur = await conn.execute("SELECT id FROM products ORDER BY id LIMIT 5")
    return StreamingResponse(events(await cur.fetchall()), media_type="text/event-stream")  # returned first


# Case 3: work scheduled after the response, with the request's connection or its own.
async def record_visit(conn: psycopg.AsyncConnection | None, customer_id: int, request_id: int) -> None:
    await asyncio.sleep(SLOW)  # e.g. a call to a mail service, before the write
    if conn is None:
        async with apool.connection() as own:  # the right way: the task borrows its own connection
            await own.execute("INSERT INTO lesson09b.visits (customer_id) VALUES (%s)", (customer_id,))
        task_outcomes["its own connection"] += 1
        return
    now = holder.get(id(conn))
    task_outcomes["still the request's" if now == request_id else "back in the pool" if now is None
                  else "lent to another request"] += 1
    await conn.execute("INSERT INTO lesson09b.visits (customer_id) VALUES (%s)", (customer_id,))
    await conn.commit()


@app.post("/visits/wrong/{customer_id}")
async def visit_wrong(customer_id: int, tasks: BackgroundTasks, conn: Conn) -> dict:
    tasks.add_task(record_visit, conn, customer_id, holder[id(conn)])
    return {"ok": True}


@app.post("/visits/early/{customer_id}")
async def visit_early(customer_id: int, tasks: BackgroundTasks, conn: EarlyConn) -> dict:
    tasks.add_task(record_visit, conn, customer_id, holder[id(conn)])
    return {"ok": True}


@app.post("/visits/right/{customer_id}")
async def visit_right(customer_id: int, tasks: BackgroundTasks, conn: EarlyConn) -> dict:
    await conn.execute("SELECT 1 FROM customers WHERE id = %s", (customer_id,))
    tasks.add_task(record_visit, None, customer_id, 0)
    return {"ok": True}
