"""A wishlist API over the shop, fixed. Each fix names the lesson that taught it.

Keep every endpoint's path, parameters and JSON shapes:

- GET  /health                            200 {"status": "ok"}, after really querying the database
- GET  /products/search?name=...          200 {"products": [{"id", "name", "price"}, ...]}: the products whose
                                          name contains `name` (ignoring case), by id, at most 20
- GET  /customers/{customer_id}/wishlist  200 {"items": [{"product_id", "name", "quantity"}, ...]}, by product id
- POST /customers/{customer_id}/wishlist  JSON {"product_id": int, "quantity": int}: adds the product to the
                                          wishlist, or sets its quantity if it is there: 201 {"product_id", "quantity"}

The table is exercise09.wishlist (customer_id, product_id, quantity, primary key (customer_id, product_id),
quantity between 1 and 99, both ids referencing the shop's tables); the check creates it for its run.
Settings come from the environment: DATABASE_URL, POOL_MAX, POOL_TIMEOUT (s), STATEMENT_TIMEOUT_MS.
"""

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]
POOL_MAX = int(os.environ.get("POOL_MAX", "4"))
POOL_TIMEOUT = float(os.environ.get("POOL_TIMEOUT", "2"))
STATEMENT_TIMEOUT_MS = int(os.environ.get("STATEMENT_TIMEOUT_MS", "1000"))

log = logging.getLogger("uvicorn.error")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Lesson 03: one pool per process, opened once, sized under the database's limit.
    # Lessons 02 and 04: every statement bounded by statement_timeout, set when each connection opens.
    pool = AsyncConnectionPool(DATABASE_URL, min_size=1, max_size=POOL_MAX, timeout=POOL_TIMEOUT, open=False,
                               kwargs={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})
    await pool.open(wait=True)
    app.state.pool = pool
    log.info("pool opened")
    try:
        yield
    finally:
        await pool.close()  # Lesson 09 part 3: at shutdown every connection ends properly.
        log.info("pool closed")


app = FastAPI(title="wishlist", lifespan=lifespan)


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    # Lessons 08 and 09 part 2: yield, so the pool gets the connection back however the request ends.
    async with request.app.state.pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.AsyncConnection, Depends(get_conn)]


# Lesson 09 part 1: errors are answered with their kind and a fitting status, never hidden.
@app.exception_handler(PoolTimeout)
async def busy(request: Request, exc: PoolTimeout) -> JSONResponse:
    return JSONResponse({"error": "PoolTimeout"}, status_code=503)


@app.exception_handler(psycopg.errors.QueryCanceled)
async def too_slow(request: Request, exc: psycopg.Error) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__}, status_code=503)


@app.exception_handler(psycopg.errors.IntegrityError)
async def conflict(request: Request, exc: psycopg.Error) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__}, status_code=409)


@app.exception_handler(psycopg.Error)
async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
    log.error("database error: %s", type(exc).__name__)
    return JSONResponse({"error": type(exc).__name__}, status_code=500)


class Wish(BaseModel):
    product_id: int
    quantity: int


# Lesson 07: async def endpoints await an async driver, so no request holds up the event loop.
@app.get("/health")
async def health(conn: Conn):
    await conn.execute("SELECT 1")
    return {"status": "ok"}


@app.get("/products/search")
async def search(name: str, conn: Conn):
    # Lesson 01: the value travels as a parameter, never inside the SQL text.
    cur = await conn.execute(
        "SELECT id, name, price FROM products WHERE name ILIKE '%%' || %s || '%%' ORDER BY id LIMIT 20", (name,))
    return {"products": [{"id": id_, "name": name_, "price": str(price)} for id_, name_, price in await cur.fetchall()]}


@app.get("/customers/{customer_id}/wishlist")
async def wishlist(customer_id: int, conn: Conn):
    cur = await conn.execute(
        "SELECT w.product_id, p.name, w.quantity FROM exercise09.wishlist w JOIN products p ON p.id = w.product_id"
        " WHERE w.customer_id = %s ORDER BY w.product_id", (customer_id,))
    return {"items": [{"product_id": pid, "name": name, "quantity": qty} for pid, name, qty in await cur.fetchall()]}


@app.post("/customers/{customer_id}/wishlist", status_code=201)
async def add(customer_id: int, wish: Wish, conn: Conn):
    async with conn.transaction():  # Lesson 04: committed when the block ends, rolled back if it raises.
        await conn.execute(
            "INSERT INTO exercise09.wishlist (customer_id, product_id, quantity) VALUES (%s, %s, %s)"
            " ON CONFLICT (customer_id, product_id) DO UPDATE SET quantity = excluded.quantity",
            (customer_id, wish.product_id, wish.quantity))
    return {"product_id": wish.product_id, "quantity": wish.quantity}
