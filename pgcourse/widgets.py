"""Live views for the lessons: a connection monitor, and a control to rerun a measurement.

Both follow the same rules, so that headless execution and nbval see stable outputs: state
changes only through widget traitlets (never print or clear_output from a thread or callback),
the text representation is fixed, and no thread is left running after stop().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable
from html import escape

import ipywidgets
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SESSIONS = """
SELECT coalesce(state, 'starting'), coalesce(nullif(application_name, ''), '(none)'), usename
FROM pg_stat_activity
WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (%s::text[] IS NULL OR usename = ANY(%s::text[]))
"""


class ConnectionMonitor(ipywidgets.VBox):
    """The sessions on one database (and optionally some roles), polled from pg_stat_activity.

    Shows counts by state and by application_name, the count against the role's or the server's
    limit, pool statistics when given a pool, and a small time series. Use as a context manager,
    or call start() and stop().
    """

    def __init__(self, url: str, *, roles: list[str] | None = None, pool=None, interval: float = 0.2,
                 history: int = 150):
        self._view = ipywidgets.HTML()
        super().__init__([self._view])
        self.url, self.roles, self.pool, self.interval = url, roles, pool, interval
        self.database = conninfo_to_dict(url).get("dbname", "")
        self.history: list[int] = []
        self.peak = 0
        self._keep = history
        self._latest: dict = {"total": 0, "by_state": {}, "by_application": {}}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._limit = ""

    def __repr__(self) -> str:  # fixed: the live numbers are in the widget, not in the text output
        roles = f", roles={self.roles}" if self.roles else ""
        return f"ConnectionMonitor(database={self.database!r}{roles})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ConnectionMonitor:
        self._conn = psycopg.connect(make_conninfo(self.url, application_name="pgcourse-monitor"), autocommit=True)
        self._limit = self._read_limit()
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pgcourse-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the monitor's own connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ConnectionMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def snapshot(self) -> dict:
        """The latest counts: total, by_state, by_application (what the widget shows)."""
        return dict(self._latest)

    def poll(self) -> dict:
        """Read pg_stat_activity once and update the view; returns the counts."""
        rows = self._conn.execute(SESSIONS, (self.database, self.roles, self.roles)).fetchall()
        self._latest = {"total": len(rows), "by_state": dict(Counter(r[0] for r in rows)),
                        "by_application": dict(Counter(r[1] for r in rows))}
        self.history = (self.history + [len(rows)])[-self._keep:]
        self.peak = max(self.peak, len(rows))
        self._view.value = self._render()
        return self._latest

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except psycopg.Error:  # the server went away for a moment (a lab terminates sessions)
                continue

    def _read_limit(self) -> str:
        if self.roles and len(self.roles) == 1:
            row = self._conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", self.roles).fetchone()
            if row and row[0] >= 0:
                return f"role {self.roles[0]} limit {row[0]}"
        return f"server max_connections {self._conn.execute('SHOW max_connections').fetchone()[0]}"

    def _render(self) -> str:
        latest = self._latest
        states = ", ".join(f"{escape(k)} {v}" for k, v in sorted(latest["by_state"].items())) or "none"
        apps = ", ".join(f"{escape(k)} {v}" for k, v in sorted(latest["by_application"].items())) or "none"
        pool = ""
        if self.pool is not None:
            if hasattr(self.pool, "get_stats"):
                stats = self.pool.get_stats()
                pool = (f"<br>pool: size {stats.get('pool_size')}, available {stats.get('pool_available')},"
                        f" waiting {stats.get('requests_waiting')}")
            elif hasattr(self.pool, "status"):
                pool = f"<br>pool: {escape(self.pool.status())}"
        return (f"<b>{latest['total']}</b> sessions on <code>{escape(self.database)}</code>"
                f" (peak {self.peak}; {escape(self._limit)})<br>by state: {states}<br>"
                f"by application_name: {apps}{pool}<br>{sparkline(self.history)}")


def sparkline(values: list[int], width: int = 300, height: int = 40) -> str:
    """An inline SVG line of the values, scaled to the largest."""
    if len(values) < 2:
        return ""
    top = max(max(values), 1)
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - v / top * (height - 2) - 1:.1f}" for i, v in enumerate(values))
    return (f'<svg width="{width}" height="{height}" style="background:#f6f6f6">'
            f'<polyline fill="none" stroke="#336" stroke-width="1.5" points="{points}"/></svg>')


class RerunControl(ipywidgets.VBox):
    """A slider and a button that rerun a measurement: run(value) returns an HTML summary.

    `run` may be async: a widget callback runs on the kernel's event-loop thread, so a coroutine
    is run to completion on a worker thread with its own loop.
    """

    def __init__(self, run: Callable[[int], str], *, label: str, values: list[int], value: int):
        self._run = run
        self.slider = ipywidgets.SelectionSlider(options=values, value=value, description=label)
        self.button = ipywidgets.Button(description="Run")
        self.result = ipywidgets.HTML("Pick a value and press Run.")
        self.button.on_click(self._clicked)
        super().__init__([ipywidgets.HBox([self.slider, self.button]), self.result])

    def __repr__(self) -> str:
        return f"RerunControl({self.slider.description!r})"

    def _clicked(self, _button) -> None:
        self.button.disabled = True
        self.result.value = f"Running with {self.slider.value} ..."
        started = time.perf_counter()
        try:
            outcome = self._run(self.slider.value)
            if inspect.isawaitable(outcome):
                with concurrent.futures.ThreadPoolExecutor(1) as worker:
                    outcome = worker.submit(asyncio.run, outcome).result()
            self.result.value = f"{outcome} (took {time.perf_counter() - started:.1f} s)"
        finally:
            self.button.disabled = False
