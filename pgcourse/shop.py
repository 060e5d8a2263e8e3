"""SQLAlchemy ORM classes for the sample shop (lesson 08, its exercises and their checks).

They map the tables `pgcourse/sql/schema.sql` creates, and nothing more: lesson 08 shows this
source (`inspect.getsource`), and every relationship keeps SQLAlchemy's default loading
(`lazy="select"`: each attribute loads with its own query when first read), so that the N+1
problem appears where it does in real code. A query chooses its loading with options
(`selectinload`, `joinedload`, `raiseload`).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import ForeignKey, ForeignKeyConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str]
    country: Mapped[str]
    created_at: Mapped[dt.datetime]

    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")

    def __repr__(self) -> str:
        return f"Customer(id={self.id}, name={self.name!r})"


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str]
    name: Mapped[str]
    category: Mapped[str]
    price: Mapped[Decimal]
    stock: Mapped[int]

    def __repr__(self) -> str:
        return f"Product(id={self.id}, sku={self.sku!r})"


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str]
    created_at: Mapped[dt.datetime]

    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list[OrderItem]] = relationship(back_populates="order", order_by="OrderItem.line_no")

    def __repr__(self) -> str:
        return f"Order(id={self.id}, status={self.status!r})"


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = (ForeignKeyConstraint(["order_id"], ["orders.id"]),)

    order_id: Mapped[int] = mapped_column(primary_key=True)
    line_no: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]
    unit_price: Mapped[Decimal]

    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()

    def __repr__(self) -> str:
        return f"OrderItem(order_id={self.order_id}, line_no={self.line_no})"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    balance: Mapped[Decimal]


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[dt.datetime]
    customer_id: Mapped[int]
    kind: Mapped[str]
    payload: Mapped[dict] = mapped_column(JSONB)
