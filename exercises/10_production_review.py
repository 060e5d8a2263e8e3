"""An accounts service, as an assistant wrote it. It is tidy, it answers, and it is not ready for production.

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
Settings come from the environment: DATABASE_URL.
"""

import logging
import os
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]

log = logging.getLogger("uvicorn.error")

pool = AsyncConnectionPool(DATABASE_URL, open=False)


@asynccontextmanager
async def lifespan(app: FastAPI):
    log.info("Connecting to %s", DATABASE_URL)
    await pool.open()
    yield


app = FastAPI(title="accounts", lifespan=lifespan)


async def get_conn() -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(DATABASE_URL)
    return conn


Conn = Annotated[psycopg.AsyncConnection, Depends(get_conn)]

_reader: psycopg.AsyncConnection | None = None


async def reader() -> psycopg.AsyncConnection:
    """One warm connection for the hot read path: no connect per lookup."""
    global _reader
    if _reader is None or _reader.closed:
        _reader = await psycopg.AsyncConnection.connect(DATABASE_URL)
    return _reader


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
    cur = await conn.execute(f"SELECT id, owner, balance FROM exercise10.accounts"
                             f" WHERE owner ILIKE '%{owner}%' ORDER BY id LIMIT 20")
    return {"accounts": [account_json(row) for row in await cur.fetchall()]}


@app.get("/accounts/{account_id}")
async def account(account_id: int):
    conn = await reader()
    cur = await conn.execute("SELECT id, owner, balance FROM exercise10.accounts WHERE id = %s", (account_id,))
    row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": "no such account"}, status_code=404)
    return account_json(row)


@app.post("/transfers", status_code=201)
async def transfer(t: Transfer, conn: Conn):
    await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    cur = await conn.execute("SELECT balance FROM exercise10.accounts WHERE id = %s", (t.from_id,))
    row = await cur.fetchone()
    if row is None or row[0] < t.amount:
        await conn.rollback()
        return JSONResponse({"error": "insufficient funds"}, status_code=409)
    await conn.execute("UPDATE exercise10.accounts SET balance = balance - %s WHERE id = %s", (t.amount, t.from_id))
    await conn.execute("UPDATE exercise10.accounts SET balance = balance + %s WHERE id = %s", (t.amount, t.to_id))
    await conn.commit()
    return {"from_id": t.from_id, "to_id": t.to_id, "amount": t.amount}


@app.get("/events/export")
async def export(before_id: int):
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, customer_id, kind FROM events WHERE id < %s ORDER BY id", (before_id,))
        rows = await cur.fetchall()
    body = "id,customer_id,kind\n" + "".join(f"{i},{c},{k}\n" for i, c, k in rows)
    return PlainTextResponse(body, media_type="text/csv")
