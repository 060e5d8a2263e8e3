"""The shop API as a code assistant often writes it. It works for one user at a time; lesson 09
part 1 reads the lines marked WRONG and loads it to measure what they cost. Compare with shop_fixed.py.
"""

import os
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import BaseModel

app = FastAPI()


def get_conn():
    # WRONG (lesson 03): a new connection for every request, no pool and no limit: the server's slots run out.
    # WRONG: `return`, not `yield`: nothing ever closes it (it goes when Python frees the object).
    # WRONG (lessons 02 and 04): no connect_timeout, no statement_timeout: a stuck query holds its request as long as it runs.
    return psycopg.connect(os.environ["DATABASE_URL"], row_factory=dict_row)


Conn = Annotated[psycopg.Connection, Depends(get_conn)]


@app.get("/health")
async def health(conn: Conn):
    # WRONG (lesson 07): a blocking driver call inside `async def`: the event loop stops for every query.
    conn.execute("SELECT 1")
    return {"status": "ok"}


@app.get("/customers/{customer_id}/orders")
async def customer_orders(customer_id: int, conn: Conn, after: int = 0, limit: int = 20):
    orders = conn.execute(  # WRONG (lesson 07): blocks the loop; the transaction it opens lasts until the object is freed
        "SELECT id, status, created_at FROM orders WHERE customer_id = %s AND id > %s ORDER BY id LIMIT %s",
        (customer_id, after, limit)).fetchall()
    return {"orders": orders, "next": orders[-1]["id"] if len(orders) == limit else None}


class Item(BaseModel):
    product_id: int
    quantity: int


class NewOrder(BaseModel):
    customer_id: int
    items: list[Item]


@app.post("/orders", status_code=201)
async def create_order(order: NewOrder, conn: Conn):
    order_id = conn.execute("INSERT INTO orders (customer_id, status, created_at)"
                            " VALUES (%s, 'pending', now()) RETURNING id", (order.customer_id,)).fetchone()["id"]
    for line_no, item in enumerate(order.items, start=1):
        product = conn.execute("SELECT price, stock FROM products WHERE id = %s FOR UPDATE", (item.product_id,)).fetchone()
        if product["stock"] < item.quantity:
            # WRONG (lesson 04): no rollback: the transaction stays open, its locks held, until the object is freed.
            return JSONResponse({"error": "OutOfStock"}, status_code=409)
        conn.execute("UPDATE products SET stock = stock - %s WHERE id = %s", (item.quantity, item.product_id))
        conn.execute("INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)"
                     " VALUES (%s, %s, %s, %s, %s)", (order_id, line_no, item.product_id, item.quantity, product["price"]))
    conn.commit()
    return {"order_id": order_id}


@app.get("/products/search")
async def search_products(name: str, conn: Conn):
    # WRONG (lesson 01): the value pasted into the SQL text: whoever calls the API writes your SQL.
    rows = conn.execute(f"SELECT id, name, price FROM products WHERE name ILIKE '%{name}%' ORDER BY id LIMIT 20").fetchall()
    return {"products": rows}
