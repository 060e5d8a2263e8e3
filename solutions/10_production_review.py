"""An accounts service, reviewed and fixed. Each fix names the lesson that taught it.

Keep every endpoint's path, parameters and JSON shapes:

- GET  /health                     200 {"status": "ok"}, after really querying the database
- GET  /accounts/search?owner=...  200 {"accounts": [{"id", "owner", "balance"}, ...]}: the accounts whose owner
                                   contains `owner` (ignoring case), by id, at most 20; balance as a string
- GET  /accounts/{account_id}      200 {"id", "owner", "balance"}, or 404 {"error": "no such account"}
- POST /transfers                  JSON {"from_id": int, "to_id": int, "amount": int}: moves `amount` from one
                                   account to the other in a SERIALIZABLE transaction: 201 {"from_id", "to_id",
                                   "amount"}, or 409 {"error": "insufficient funds"} (nothing moved)
- GET  /events/export?before_id=N  200 text/csv: the line "id,customer_id,kind", then one line per event whose
                                   id is below N, by id

The table is exercise10.accounts (id, owner, balance numeric(12,2) >= 0); the check creates it for its run.
Settings come from the environment: DATABASE_URL, POOL_MAX, POOL_TIMEOUT (s), STATEMENT_TIMEOUT_MS.
"""

import asyncio
import logging
import os
import random
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]
POOL_MAX = int(os.environ.get("POOL_MAX", "4"))
POOL_TIMEOUT = float(os.environ.get("POOL_TIMEOUT", "2"))
STATEMENT_TIMEOUT_MS = int(os.environ.get("STATEMENT_TIMEOUT_MS", "1000"))
ATTEMPTS = 8  # tries of a transfer that meets a serialization failure

log = logging.getLogger("uvicorn.error")


def masked(url: str) -> str:
    # Lesson 02 part 1: show where you connect, never the password.
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)).geturl()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Lesson 03: one pool per process; lessons 02 and 04: a checkout timeout and a statement_timeout.
    pool = AsyncConnectionPool(DATABASE_URL, min_size=1, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False,
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})
    await pool.open(wait=True)
    app.state.pool = pool
    log.info("pool opened on %s", masked(DATABASE_URL))  # Lesson 02 part 2: the password stays out of logs.
    try:
        yield
    finally:
        await pool.close()  # Lesson 09 part 3: at shutdown every session ends properly.


app = FastAPI(title="accounts", lifespan=lifespan)


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    # Lessons 08 part 1 and 09 part 2: yield, so the connection goes back (and its transaction ends).
    async with request.app.state.pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.AsyncConnection, Depends(get_conn)]


@app.exception_handler(PoolTimeout)
@app.exception_handler(psycopg.errors.QueryCanceled)
@app.exception_handler(psycopg.errors.SerializationFailure)
async def busy(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__}, status_code=503)


class Transfer(BaseModel):
    from_id: int
    to_id: int
    amount: int


def account_json(row) -> dict:
    return {"id": row[0], "owner": row[1], "balance": str(row[2])}


@app.get("/health")
async def health(conn: Conn):
    await conn.execute("SELECT 1")
    return {"status": "ok"}


@app.get("/accounts/search")
async def search(owner: str, conn: Conn):
    # Lesson 01 part 1: the value travels as a parameter, never inside the SQL text.
    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts"
                             " WHERE owner ILIKE '%%' || %s || '%%' ORDER BY id LIMIT 20", (owner,))
    return {"accounts": [account_json(row) for row in await cur.fetchall()]}


@app.get("/accounts/{account_id}")
async def account(account_id: int, conn: Conn):
    # Lesson 04 part 1: a pooled connection whose transaction ends with the request, not one kept idle in it.
    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts WHERE id = %s", (account_id,))
    row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": "no such account"}, status_code=404)
    return account_json(row)


@app.post("/transfers", status_code=201)
async def transfer(t: Transfer, conn: Conn):
    # Lesson 04 part 2: a serialization failure is retried, a bounded number of times, with a random pause.
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                cur = await conn.execute("SELECT balance FROM exercise10.accounts WHERE id = %s", (t.from_id,))
                row = await cur.fetchone()
                if row is None or row[0] < t.amount:
                    return JSONResponse({"error": "insufficient funds"}, status_code=409)
                await conn.execute("UPDATE exercise10.accounts SET balance = balance - %s WHERE id = %s",
                                   (t.amount, t.from_id))
                await conn.execute("UPDATE exercise10.accounts SET balance = balance + %s WHERE id = %s",
                                   (t.amount, t.to_id))
            return {"from_id": t.from_id, "to_id": t.to_id, "amount": t.amount}
        except psycopg.errors.SerializationFailure:
            if attempt == ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))


@app.get("/events/export")
async def export(before_id: int, request: Request):
    # Lesson 06: a named (server-side) cursor sends the rows in batches; the answer streams them on.
    async def lines() -> AsyncIterator[str]:
        yield "id,customer_id,kind\n"
        async with request.app.state.pool.connection() as conn, conn.cursor(name="export") as cur:
            await cur.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id", (before_id,))
            while rows := await cur.fetchmany(5000):
                yield "".join(f"{i},{c},{k}\n" for i, c, k in rows)

    return StreamingResponse(lines(), media_type="text/csv")
