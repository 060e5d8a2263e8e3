"""Lesson 10 part 3: a service that says what its pools do, in Prometheus' text format at GET /metrics.

Two pools, one per way the course talks to PostgreSQL: psycopg_pool serves /psycopg/report and SQLAlchemy's
QueuePool serves /sqlalchemy/report. Each report holds its connection for REPORT_SECONDS (a pg_sleep standing
for a slow query). /customers/{id} and /events/count are a quick and a slow real query (psycopg pool).
SERVICE_NAME becomes the application_name of every connection, so pg_stat_activity tells this service apart.

Run: DATABASE_URL=postgresql://... SERVICE_NAME=orders-api python -m uvicorn prod_metrics:app --port 8000
"""

import os
import time
from contextlib import asynccontextmanager

import prometheus_client
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

NAME = os.environ.get("SERVICE_NAME", "prod-metrics")
POOL_MAX = int(os.environ.get("POOL_MAX", "3"))
REPORT_SECONDS = float(os.environ.get("REPORT_SECONDS", "0.05"))

prometheus_client.disable_created_metrics()  # no *_created series: one sample per counter
REGISTRY = CollectorRegistry()  # this service's own registry, not the global one the library fills by default

# psycopg_pool's get_stats(): the measures of right now are gauges; the counts since the pool opened, counters.
GAUGES = {"pool_min": "min_size", "pool_max": "max_size", "pool_size": "connections open or being opened",
          "pool_available": "connections idle in the pool", "requests_waiting": "requests queued for a connection now"}
COUNTERS = {"requests_num": ("requests", "connections asked for"),
            "requests_queued": ("requests_queued", "requests that had to queue"),
            "requests_wait_ms": ("requests_wait_seconds", "time spent queueing for a connection"),
            "requests_errors": ("requests_errors", "requests that got no connection (timeout, error)"),
            "usage_ms": ("usage_seconds", "time connections were lent out"),
            "returns_bad": ("returns_bad", "connections returned broken"),
            "connections_num": ("connections", "connections opened"),
            "connections_ms": ("connections_seconds", "time spent opening connections"),
            "connections_errors": ("connections_errors", "failed attempts to connect"),
            "connections_lost": ("connections_lost", "connections found broken in the pool")}


class PsycopgPoolCollector:
    """Turns pool.get_stats() into Prometheus metrics at each scrape."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    def collect(self):
        stats = self.pool.get_stats()  # get, never pop: popping would reset the counters for every other reader
        for key, help_text in GAUGES.items():
            yield GaugeMetricFamily(f"psycopg_pool_{key}", help_text, value=stats.get(key, 0))
        for key, (name, help_text) in COUNTERS.items():
            value = stats.get(key, 0) / (1000 if key.endswith("_ms") else 1)  # Prometheus counts time in seconds
            yield CounterMetricFamily(f"psycopg_pool_{name}", help_text, value=value)


# SQLAlchemy's pool events, as counters and gauges of the same registry.
SA_CONNECTS = Counter("sqlalchemy_pool_connects", "connections opened (event: connect)", registry=REGISTRY)
SA_CHECKOUTS = Counter("sqlalchemy_pool_checkouts", "connections lent out (event: checkout)", registry=REGISTRY)
SA_CHECKINS = Counter("sqlalchemy_pool_checkins", "connections given back (event: checkin)", registry=REGISTRY)
SA_OPEN = Gauge("sqlalchemy_pool_open", "connections open: connect minus close", registry=REGISTRY)
SA_CHECKED_OUT = Gauge("sqlalchemy_pool_checked_out", "connections lent out now", registry=REGISTRY)
# No pool event fires while a request waits for a connection: the endpoint measures that itself.
SA_WAITING = Gauge("sqlalchemy_pool_requests_waiting", "requests waiting for a connection now", registry=REGISTRY)
SA_WAIT = Counter("sqlalchemy_pool_requests_wait_seconds", "time spent getting a connection", registry=REGISTRY)


def watch(engine) -> None:
    pool = engine.sync_engine.pool
    event.listen(pool, "connect", lambda dbapi_conn, record: (SA_CONNECTS.inc(), SA_OPEN.inc()))
    event.listen(pool, "close", lambda dbapi_conn, record: SA_OPEN.dec())
    event.listen(pool, "checkout", lambda dbapi_conn, record, proxy: (SA_CHECKOUTS.inc(), SA_CHECKED_OUT.inc()))
    event.listen(pool, "checkin", lambda dbapi_conn, record: (SA_CHECKINS.inc(), SA_CHECKED_OUT.dec()))


@asynccontextmanager
async def lifespan(app: FastAPI):
    url = os.environ["DATABASE_URL"]
    pool = AsyncConnectionPool(url, min_size=1, max_size=POOL_MAX, timeout=5.0,
                               kwargs={"application_name": NAME}, open=False)
    await pool.open(wait=True)
    engine = create_async_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=POOL_MAX,
                                 max_overflow=0, pool_timeout=5.0, connect_args={"application_name": NAME})
    watch(engine)
    collector = PsycopgPoolCollector(pool)
    REGISTRY.register(collector)
    app.state.pool, app.state.engine = pool, engine
    yield
    REGISTRY.unregister(collector)
    await engine.dispose()
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health():
    return {"status": "ok"}  # liveness: the process answers (lesson 10 part 2 is about readiness)


@app.get("/metrics")
async def metrics():
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@app.get("/psycopg/report")
async def psycopg_report(request: Request):
    async with request.app.state.pool.connection() as conn:
        await conn.execute("SELECT pg_sleep(%s)", (REPORT_SECONDS,))
    return {"pool": "psycopg"}


@asynccontextmanager
async def checkout(engine):
    """engine.connect(), timed: no pool event fires while a request waits, so the wait is measured here."""
    started = time.perf_counter()
    with SA_WAITING.track_inprogress():
        conn = await engine.connect()  # checks a connection out of the pool, waiting for one if all are lent
    SA_WAIT.inc(time.perf_counter() - started)
    try:
        yield conn
    finally:
        await conn.close()  # checks it back in


@app.get("/sqlalchemy/report")
async def sqlalchemy_report(request: Request):
    async with checkout(request.app.state.engine) as conn:
        await conn.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": REPORT_SECONDS})
    return {"pool": "sqlalchemy"}


@app.get("/customers/{customer_id}")
async def customer(customer_id: int, request: Request):
    async with request.app.state.pool.connection() as conn:
        row = await (await conn.execute("SELECT name FROM customers WHERE id = %s", (customer_id,))).fetchone()
    return {"name": row[0] if row else None}


@app.get("/events/count")
async def events_count(email: str, path: str, request: Request):
    query = ("SELECT count(*) FROM events e JOIN customers c ON c.id = e.customer_id"
             " WHERE c.email = %s AND e.payload->>'path' = %s")
    async with request.app.state.pool.connection() as conn:
        row = await (await conn.execute(query, (email, path))).fetchone()
    return {"events": row[0]}
