"""A load generator for lesson 09: many HTTP requests in flight, counted, timed and classified.

`run()` sends a bounded number of requests from a seeded mix with httpx.AsyncClient, never more than
`concurrency` at once, and sends no new one after `time_limit` seconds. Each request's outcome is kept:
its kind, HTTP status (or the client-side error), and latency. Meanwhile a thread reads the server's
`pg_stat_activity` every 10 ms for the service's `application_name`, so the table can say how many
connections the service really held.
"""

from __future__ import annotations

import asyncio
import collections
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

__all__ = ["Mix", "shop_mix", "run", "Load", "Outcome", "table", "plot", "ConnectionWatch"]

Request = tuple[str, str, dict | None]  # method, path, JSON body


class Mix:
    """A seeded mix of requests: `weights` maps a kind to its share, `makers` a kind to a request."""

    def __init__(self, makers: dict[str, Callable[[random.Random], Request]], weights: dict[str, float],
                 seed: int = 9) -> None:
        self.makers, self.weights, self.seed = makers, weights, seed

    def requests(self, n: int) -> list[tuple[str, Request]]:
        """The first n requests of this mix: the same list on every run with the same seed."""
        rng = random.Random(self.seed)
        kinds = rng.choices(list(self.weights), weights=list(self.weights.values()), k=n)
        return [(kind, self.makers[kind](rng)) for kind in kinds]


def shop_mix(seed: int = 9, customers: int = 1000, products: int = 200) -> Mix:
    """Lesson 09's standard mix: a customer's orders page 70 %, a new order 20 %, the health check 10 %."""
    return Mix({
        "orders page": lambda r: ("GET", f"/customers/{r.randint(1, customers)}/orders?limit=20", None),
        "new order": lambda r: ("POST", "/orders", {"customer_id": r.randint(1, customers),
                                                    "items": [{"product_id": r.randint(1, products), "quantity": 1}]}),
        "health": lambda r: ("GET", "/health", None),
    }, {"orders page": 0.7, "new order": 0.2, "health": 0.1}, seed)


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer (the client's error is in `error`)
    seconds: float
    error: str | None = None  # "503 PoolTimeout", "500 Internal Server Error", "ReadTimeout" ...
    started: float = 0.0  # seconds after the run began

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 500 and self.error is None


class ConnectionWatch:
    """Counts the server sessions of one application_name every `interval` s, in a thread."""

    # Scoped to the observer's database: in a room, other databases run services of the same name.
    QUERY = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
             " AND datname = current_database() AND backend_type = 'client backend'")

    def __init__(self, database_url: str, application_name: str, interval: float = 0.01) -> None:
        self.url, self.name, self.interval = database_url, application_name, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    def count(self) -> int:
        return self._conn.execute(self.QUERY, (self.name,)).fetchone()[0]

    def __enter__(self) -> ConnectionWatch:
        self._conn = psycopg.connect(self.url, autocommit=True, application_name="loadgen-watch")
        start = time.perf_counter()

        def watch() -> None:
            while not self._stop.is_set():
                self.samples.append((time.perf_counter() - start, self.count()))
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=watch, name="connection-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)

    def settled(self, wait: float = 2.0) -> int:
        """The count once it stops falling (at most `wait` s): what the service keeps open at rest."""
        with psycopg.connect(self.url, autocommit=True, application_name="loadgen-watch") as conn:
            deadline, last = time.monotonic() + wait, None
            while True:
                n = conn.execute(self.QUERY, (self.name,)).fetchone()[0]
                if n == last or time.monotonic() > deadline:
                    return n
                last = n
                time.sleep(0.1)


@dataclass
class Load:
    label: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    not_sent: int = 0  # requests of the run left unsent at the time limit
    peak_connections: int | None = None
    connections_after: int | None = None

    def latencies_ms(self, ok_only: bool = False) -> list[float]:
        return sorted(o.seconds * 1000 for o in self.outcomes if o.ok or not ok_only)

    def percentile(self, q: float, ok_only: bool = False) -> float:
        values = self.latencies_ms(ok_only)
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]

    def errors(self) -> collections.Counter:
        return collections.Counter(o.error or f"{o.status}" for o in self.outcomes if not o.ok)

    def summary(self) -> dict:
        ok = sum(o.ok for o in self.outcomes)
        return {"label": self.label, "requests": len(self.outcomes), "ok": ok, "failed": len(self.outcomes) - ok,
                "not sent": self.not_sent, "rps": ok / self.wall if self.wall else 0.0,
                "p50_ms": self.percentile(50), "p95_ms": self.percentile(95), "p99_ms": self.percentile(99),
                "errors": dict(sorted(self.errors().items())), "peak_connections": self.peak_connections,
                "connections_after": self.connections_after}


def _error_of(response) -> str | None:
    if response.status_code < 500:
        return None
    try:
        body = response.json()
        name = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        name = None
    return f"{response.status_code} {name or response.reason_phrase}"


async def run(base_url: str, mix: Mix, *, requests: int = 300, concurrency: int = 20, time_limit: float = 8.0,
              timeout: float = 5.0, label: str = "", watch: tuple[str, str] | None = None,
              progress: bool = True) -> Load:
    """Send `requests` requests of `mix`, at most `concurrency` at once, none started after `time_limit` s.

    `watch=(database_url, application_name)` also records the service's peak and settled connection counts.
    4xx answers count as answers (a 409 for an empty stock is the service working); 5xx and client errors fail.
    """
    import httpx

    from .progress import progress as bar

    todo = mix.requests(requests)
    load = Load(label)
    queue: asyncio.Queue = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    shown = bar(total=requests, desc=label or "requests") if progress else None
    # A new TCP connection per request: uvicorn closes a connection after an application error, and a
    # kept-alive connection reused at that moment would fail the next request with a ReadError of our own.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    start = time.perf_counter()

    async def worker(client) -> None:
        while not queue.empty():
            if time.perf_counter() - start > time_limit:
                return
            kind, (method, path, body) = queue.get_nowait()
            began = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                outcome = Outcome(kind, response.status_code, time.perf_counter() - began, _error_of(response))
            except httpx.HTTPError as exc:
                outcome = Outcome(kind, None, time.perf_counter() - began, type(exc).__name__)
            outcome.started = began - start
            load.outcomes.append(outcome)
            if shown is not None:
                shown.update(1)

    watcher = ConnectionWatch(*watch) if watch else None
    try:
        if watcher:
            watcher.__enter__()
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        load.wall = time.perf_counter() - start
    finally:
        if watcher:
            watcher.__exit__()
        if shown is not None:
            shown.close()
    load.not_sent = queue.qsize()
    if watcher:
        load.peak_connections = watcher.peak
        load.connections_after = watcher.settled()
    return load


def table(loads: list[Load]):
    """One row per run: requests/s, latency percentiles, errors by kind, server connections."""
    import pandas as pd

    from .bench import duration, rate

    rows = []
    for load in loads:
        s = load.summary()
        rows.append({"version": s["label"], "requests": s["requests"], "ok": s["ok"], "failed": s["failed"],
                     "throughput": rate(s["rps"], "requests"), "p50": duration(s["p50_ms"] / 1000),
                     "p95": duration(s["p95_ms"] / 1000), "p99": duration(s["p99_ms"] / 1000),
                     "errors": ", ".join(f"{k} ×{v}" for k, v in s["errors"].items()) or "none",
                     "peak connections": s["peak_connections"], "connections after": s["connections_after"]})
    return pd.DataFrame(rows).set_index("version")


def plot(loads: list[Load], title: str = "The same load, each version"):
    """Latency percentiles (bars, log scale) and requests/s for each run."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    labels = [load.label for load in loads]
    for i, q in enumerate((50, 95, 99)):
        left.bar([x + i * 0.27 for x in range(len(loads))], [load.percentile(q) for load in loads], width=0.27,
                 label=f"p{q}")
    left.set_xticks([x + 0.27 for x in range(len(loads))], labels)
    left.set_yscale("log")
    left.set_ylabel("latency (ms, log scale)")
    left.legend()
    right.bar(labels, [load.summary()["rps"] for load in loads], color="tab:green")
    right.set_ylabel("successful requests/s")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
