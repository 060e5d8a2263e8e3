"""A wishlist API over the shop, as a hurried assistant wrote it. It answers on a quiet afternoon; fix it.

Keep every endpoint's path, parameters and JSON shapes:

- GET  /health                            200 {"status": "ok"}, after really querying the database
- GET  /products/search?name=...          200 {"products": [{"id", "name", "price"}, ...]}: the products whose
                                          name contains `name` (ignoring case), by id, at most 20
- GET  /customers/{customer_id}/wishlist  200 {"items": [{"product_id", "name", "quantity"}, ...]}, by product id
- POST /customers/{customer_id}/wishlist  JSON {"product_id": int, "quantity": int}: adds the product to the
                                          wishlist, or sets its quantity if it is there: 201 {"product_id", "quantity"}

The table is exercise09.wishlist (customer_id, product_id, quantity, primary key (customer_id, product_id),
quantity between 1 and 99, both ids referencing the shop's tables); the check creates it for its run.
Settings come from the environment: DATABASE_URL.
"""

import os
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]

app = FastAPI(title="wishlist")


def get_conn() -> psycopg.Connection:
    conn = psycopg.connect(DATABASE_URL)
    return conn


Conn = Annotated[psycopg.Connection, Depends(get_conn)]


class Wish(BaseModel):
    product_id: int
    quantity: int


@app.get("/health")
async def health(conn: Conn):
    conn.execute("SELECT 1")
    return {"status": "ok"}


@app.get("/products/search")
async def search(name: str, conn: Conn):
    rows = conn.execute(
        f"SELECT id, name, price FROM products WHERE name ILIKE '%{name}%' ORDER BY id LIMIT 20").fetchall()
    return {"products": [{"id": id_, "name": name_, "price": str(price)} for id_, name_, price in rows]}


@app.get("/customers/{customer_id}/wishlist")
async def wishlist(customer_id: int, conn: Conn):
    rows = conn.execute(
        "SELECT w.product_id, p.name, w.quantity FROM exercise09.wishlist w JOIN products p ON p.id = w.product_id"
        " WHERE w.customer_id = %s ORDER BY w.product_id", (customer_id,)).fetchall()
    return {"items": [{"product_id": pid, "name": name, "quantity": qty} for pid, name, qty in rows]}


@app.post("/customers/{customer_id}/wishlist", status_code=201)
async def add(customer_id: int, wish: Wish, conn: Conn):
    try:
        conn.execute(
            "INSERT INTO exercise09.wishlist (customer_id, product_id, quantity) VALUES (%s, %s, %s)"
            " ON CONFLICT (customer_id, product_id) DO UPDATE SET quantity = excluded.quantity",
            (customer_id, wish.product_id, wish.quantity))
        conn.commit()
    except Exception:
        return {}
    return {"product_id": wish.product_id, "quantity": wish.quantity}
