"""Lesson 09's service at a larger scale than a notebook can afford (make bench-web-api).

The lessons scale their loads to finish in under two minutes on 2 cores. This script runs the same
service (`notebooks/services/shop_fixed.py`) and the same request mix with more requests, for each
pool size and worker count you give, against a fresh clone of the course database (dropped after),
and prints one line per run: requests/s, p50/p95/p99, errors, and the server connections it held.
Beside them, Little's law from the pool's own counters (`shop_tuning.py`, as lesson 09 part 3 reads
them): W, how long a request held its connection, and L = throughput x W, the connections busy on
average; a bigger machine shows where its own curve bends.

    .venv/bin/python benchmarks/web_api.py [--requests 3000] [--concurrency 32] [--pools 1,2,4,8,16] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgcourse import loadgen, target  # noqa: E402
from pgcourse.bench import duration, rate  # noqa: E402
from pgcourse.checks import with_params  # noqa: E402
from pgcourse.notebooks import fresh_database  # noqa: E402
from pgcourse.webservice import Service  # noqa: E402

SERVICES = ROOT / "notebooks" / "services"


def pool_counters(url: str) -> dict:
    """psycopg_pool's counters since the last call, from shop_tuning's GET /pool."""
    with urllib.request.urlopen(url + "/pool", timeout=10) as response:
        return json.load(response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count() or 2
    parser.add_argument("--requests", type=int, default=3000, help="requests per run (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16 * cores, help="requests in flight (default 16 x cores)")
    parser.add_argument("--pools", default="1,2,4,8,16", help="pool sizes to run, comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each has its own pool)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per run before no new request starts")
    args = parser.parse_args(argv)

    tgt = target.load(say=lambda *_: None)
    print(f"{cores} cores; {args.requests:,} requests per run, {args.concurrency} in flight,"
          f" {args.workers} worker(s); shop_fixed (through shop_tuning, for its pool counters) with the lesson's mix", flush=True)
    header = (f"{'pool':>5} {'throughput':>16} {'p50':>10} {'p95':>10} {'p99':>10} {'failed':>7}"
              f" {'peak conns':>10} {'W':>10} {'L = λW':>7}")
    print(header, "-" * len(header), sep="\n", flush=True)
    with fresh_database(tgt, "bench_web_api") as name:
        url = with_params(tgt.environment(name)["DATABASE_URL"], application_name="bench-web-api")
        for size in (int(s) for s in args.pools.split(",")):
            env = {"DATABASE_URL": url, "POOL_MIN": str(size), "POOL_MAX": str(size), "POOL_TIMEOUT": "5"}
            with Service("shop_tuning:app", app_dir=SERVICES, env=env, workers=args.workers) as svc:
                pool_counters(svc.url)  # reset: the counters count from the last call
                load = asyncio.run(loadgen.run(svc.url, loadgen.shop_mix(), requests=args.requests,
                                               concurrency=args.concurrency, time_limit=args.time_limit,
                                               timeout=10.0, progress=False, watch=(url, "bench-web-api")))
                counters = pool_counters(svc.url)  # with --workers, one worker's pool: W is per checkout anyway
            s = load.summary()
            held = counters.get("usage_ms", 0) / 1000 / max(counters.get("requests_num", 0), 1)
            print(f"{size:>5} {rate(s['rps'], 'req'):>16} {duration(s['p50_ms'] / 1000):>10}"
                  f" {duration(s['p95_ms'] / 1000):>10} {duration(s['p99_ms'] / 1000):>10} {s['failed']:>7,}"
                  f" {s['peak_connections']:>10} {duration(held):>10} {s['rps'] * held:>7.1f}", flush=True)
    print("W: how long a request held its connection (the pool's usage_ms / requests_num). L = λW: the connections"
          " busy on average; a pool much larger than L waits idle, one close to its size makes requests queue.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
