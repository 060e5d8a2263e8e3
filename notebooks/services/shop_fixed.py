"""The shop API, fixed: each fix names the lesson that taught it (lesson 09 part 1 compares it with shop_broken.py).

Run: DATABASE_URL=postgresql://... python -m uvicorn shop_fixed:app --port 8000
"""

import logging
import os
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, Field

log = logging.getLogger("uvicorn.error")


def conninfo() -> str:
    """DATABASE_URL (lesson 02) plus a statement_timeout (lessons 01 and 04), kept beside any options it has."""
    url = os.environ["DATABASE_URL"]
    timeout = f"-c statement_timeout={int(os.environ.get('STATEMENT_TIMEOUT_MS', '1000'))}"
    return make_conninfo(url, options=f"{conninfo_to_dict(url).get('options', '')} {timeout}".strip())


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Lesson 03: one pool per process, opened when the service starts, closed when it stops.
    pool = AsyncConnectionPool(
        conninfo(),
        min_size=int(os.environ.get("POOL_MIN", "2")),
        max_size=int(os.environ.get("POOL_MAX", "4")),  # lesson 03: under the server's connection limit
        timeout=float(os.environ.get("POOL_TIMEOUT", "2.0")),  # lesson 03: wait for a connection, then fail fast
        kwargs={"row_factory": dict_row},  # lesson 01: rows as dicts
        open=False,
    )
    await pool.open(wait=True)
    log.info("pool opened: min_size=%d max_size=%d", pool.min_size, pool.max_size)
    app.state.pool = pool
    yield
    await pool.close()
    log.info("pool closed")


app = FastAPI(lifespan=lifespan)


async def get_conn(request: Request):
    # Lesson 03: borrow from the pool; `yield`, so after use it commits (rolls back on error) and goes back.
    async with request.app.state.pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.AsyncConnection, Depends(get_conn)]


class ShopError(Exception):
    status = 400


class OutOfStock(ShopError):
    status = 409


class UnknownProduct(ShopError):
    status = 404


# Errors become JSON that names their kind, with a status that fits; nothing is hidden behind a 200.
@app.exception_handler(ShopError)
async def shop_error(request: Request, exc: ShopError):
    return JSONResponse({"error": type(exc).__name__}, status_code=exc.status)


@app.exception_handler(psycopg.Error)  # PoolTimeout, QueryCanceled: 503, the client may retry later
async def database_error(request: Request, exc: psycopg.Error):
    status = 503 if isinstance(exc, psycopg.OperationalError) else 409 if isinstance(exc, psycopg.IntegrityError) else 500
    log.warning("%s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return JSONResponse({"error": type(exc).__name__}, status_code=status)


@app.get("/health")
async def health(request: Request):
    # A real query, with a short wait for a connection (lesson 03), so a stuck database answers 503 fast.
    try:
        async with request.app.state.pool.connection(timeout=1.0) as conn:
            await conn.execute("SELECT 1")
    except (PoolTimeout, psycopg.Error) as exc:
        return JSONResponse({"status": "unavailable", "error": type(exc).__name__}, status_code=503)
    return {"status": "ok"}


@app.get("/customers/{customer_id}/orders")
async def customer_orders(customer_id: int, conn: Conn, after: int = 0, limit: Annotated[int, Query(ge=1, le=100)] = 20):
    # Lesson 06: a keyset page (id > after), never OFFSET; lesson 07: `await` lets other requests run meanwhile.
    cur = await conn.execute(
        "SELECT id, status, created_at FROM orders WHERE customer_id = %s AND id > %s ORDER BY id LIMIT %s",
        (customer_id, after, limit))
    orders = await cur.fetchall()
    return {"orders": orders, "next": orders[-1]["id"] if len(orders) == limit else None}


class Item(BaseModel):
    product_id: int
    quantity: int = Field(gt=0)


class NewOrder(BaseModel):
    customer_id: int
    items: list[Item] = Field(min_length=1)


@app.post("/orders", status_code=201)
async def create_order(order: NewOrder, conn: Conn):
    async with conn.transaction():  # lesson 04: the order, its items and the stock change commit together or not at all
        cur = await conn.execute("INSERT INTO orders (customer_id, status, created_at)"
                                 " VALUES (%s, 'pending', now()) RETURNING id", (order.customer_id,))
        order_id = (await cur.fetchone())["id"]
        # Lesson 04: lock the rows in one order (by id), so two orders never deadlock on each other.
        for line_no, item in enumerate(sorted(order.items, key=lambda i: i.product_id), start=1):
            cur = await conn.execute("SELECT price, stock FROM products WHERE id = %s FOR UPDATE", (item.product_id,))
            product = await cur.fetchone()
            if product is None:
                raise UnknownProduct()
            if product["stock"] < item.quantity:
                raise OutOfStock()
            await conn.execute("UPDATE products SET stock = stock - %s WHERE id = %s", (item.quantity, item.product_id))
            await conn.execute("INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)"
                               " VALUES (%s, %s, %s, %s, %s)",
                               (order_id, line_no, item.product_id, item.quantity, product["price"]))
    return {"order_id": order_id}


@app.get("/products/search")
async def search_products(name: str, conn: Conn):
    # Lesson 01: the value travels as a parameter, never inside the SQL text.
    pattern = "%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    cur = await conn.execute("SELECT id, name, price FROM products WHERE name ILIKE %s ORDER BY id LIMIT 20", (pattern,))
    return {"products": await cur.fetchall()}
