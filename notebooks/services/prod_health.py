"""Health checks done right and wrong (lesson 10 part 2): liveness, readiness, and a liveness probe that asks the database.

Run: DATABASE_URL=postgresql://... python -m uvicorn prod_health:app --port 8000

- GET /live: the process answers. It touches no database: a database outage must not make the
  orchestrator restart a process that is fine.
- GET /ready: the database answers, within READY_TIMEOUT_MS for the pool checkout and again for the
  query; 503 with a JSON reason when it does not.
- GET /wrong/live: the mistake: a liveness probe that queries the database, with the pool's ordinary timeout.
- GET /slow?seconds=2: a request that takes long on the server (pg_sleep), for the client timeout demo.

POOL_CHECK=1 makes the pool test each connection before lending it (AsyncConnectionPool.check_connection).
"""

import logging
import os
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("uvicorn.error")
READY_TIMEOUT = int(os.environ.get("READY_TIMEOUT_MS", "500"))  # milliseconds, for the checkout and for the query


@asynccontextmanager
async def lifespan(app: FastAPI):
    pool = AsyncConnectionPool(
        os.environ["DATABASE_URL"],
        min_size=2,
        max_size=2,  # a fixed size: lesson 10 knows how many connections a restart leaves dead
        timeout=float(os.environ.get("POOL_TIMEOUT", "5")),  # what an ordinary request waits for a connection
        check=AsyncConnectionPool.check_connection if os.environ.get("POOL_CHECK") == "1" else None,
        kwargs={"connect_timeout": 2, "application_name": os.environ.get("APP_NAME", "prod_health")},
        open=False,
    )
    await pool.open()  # no wait: the process starts even if the database is down; /ready says so
    app.state.pool = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


def first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


@app.get("/live")
async def live():
    return {"live": True}


@app.get("/ready")
async def ready():
    try:
        async with app.state.pool.connection(timeout=READY_TIMEOUT / 1000) as conn:
            async with conn.transaction():
                await conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{READY_TIMEOUT}ms",))
                await conn.execute("SELECT 1")
    except psycopg.Error as exc:  # PoolTimeout is one too
        return JSONResponse({"ready": False, "reason": first_line(exc)}, status_code=503)
    return {"ready": True}


@app.get("/wrong/live")
async def wrong_live():
    async with app.state.pool.connection() as conn:  # the mistake: liveness that depends on the database
        await conn.execute("SELECT 1")
    return {"live": True}


@app.get("/slow")
async def slow(seconds: float = 2.0):
    async with app.state.pool.connection() as conn:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"slept": seconds}
