"""shop_fixed.py plus two lab endpoints for lesson 09 part 3: read the pool's counters, resize the pool.

A measuring tool, not a production pattern: in production POOL_MAX comes from the environment and the
service restarts to change it. Here one warm process serves every pool size of a curve, so that each
size costs a second of load instead of a restart (imports, a new pool).
Run: DATABASE_URL=postgresql://... python -m uvicorn shop_tuning:app --port 8000
"""

import asyncio

from fastapi import Request
from pydantic import BaseModel, Field
from shop_fixed import app


class PoolSize(BaseModel):
    size: int = Field(ge=1, le=64)


@app.get("/pool")
async def pool_counters(request: Request):
    # psycopg_pool's counters since the last call: requests_num, usage_ms (time lent out), requests_wait_ms ...
    return request.app.state.pool.pop_stats()


@app.put("/pool")
async def resize_pool(size: PoolSize, request: Request):
    # min_size = max_size = size, and wait (at most 2 s) until the new connections are open and idle in the pool
    # ("pool_size" counts them as soon as they are asked for). Growing only: a smaller max_size would not close
    # connections already open.
    pool = request.app.state.pool
    await pool.resize(size.size, size.size)
    for _ in range(200):
        if pool.get_stats()["pool_available"] >= size.size:
            break
        await asyncio.sleep(0.01)
    return {"pool_available": pool.get_stats()["pool_available"], "pool_max": pool.max_size}
