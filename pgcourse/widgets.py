"""Live views for the lessons: a connection monitor, and a control to rerun a measurement.

Both follow the same rules, so that headless execution and nbval see stable outputs: state
changes only through widget traitlets (never print or clear_output from a thread or callback),
the text representation is fixed, and no thread is left running after stop().

Each also carries a static rendering for readers where nothing runs (GitHub, nbviewer), which
show the first of text/html, image/png, text/plain when they cannot draw a widget: RerunControl
an HTML picture of the control, fixed text; ConnectionMonitor, at stop(), a PNG chart of the
sessions it saw, added to its display by the thread that calls stop(). nbval compares text and
HTML but not images or display updates, so only the image carries counts that could race.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import inspect
import io
import textwrap
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
        self._started = 0.0
        self.record: list[tuple[float, int]] = []  # (seconds since start, sessions): every poll, for the chart
        self._displays: list = []  # display handles, updated with the chart at stop()

    def __repr__(self) -> str:  # fixed: the live numbers are in the widget, not in the text output
        roles = f", roles={self.roles}" if self.roles else ""
        return f"ConnectionMonitor(database={self.database!r}{roles})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ipython_display_(self) -> None:
        """Show the live widget; its text form stays fixed, and stop() adds the chart for static readers."""
        from IPython.display import display

        self._displays.append(display(self._mimebundle(), raw=True, display_id=True))

    def _mimebundle(self, chart: bytes | None = None) -> dict:
        bundle = {**self._repr_mimebundle_(), "text/plain": repr(self)}
        if chart:
            bundle["image/png"] = base64.b64encode(chart).decode("ascii")
        return bundle

    def start(self) -> ConnectionMonitor:
        self._conn = psycopg.connect(make_conninfo(self.url, application_name="pgcourse-monitor"), autocommit=True)
        self._limit = self._read_limit()
        self._started = time.monotonic()
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pgcourse-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, read the server once more, close the monitor's connection, and add the chart to its display."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._conn is not None:
            try:
                self.poll()
            except psycopg.Error:
                pass
            self._conn.close()
            self._conn = None
        if self._displays:
            chart = self.chart()
            for handle in self._displays:
                handle.update(self._mimebundle(chart), raw=True)
            self._displays = []

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
        self.record = (self.record + [(time.monotonic() - self._started, len(rows))])[-RECORD:]
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


    def chart(self) -> bytes:
        """A PNG of the session count over the whole run, with the peak, the limit and the count at the end."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 2.2), dpi=100)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        seconds, counts = zip(*self.record, strict=True) if self.record else ((0.0,), (0,))
        ax.step(seconds, counts, where="post", color="#336")
        ax.fill_between(seconds, counts, step="post", color="#336", alpha=0.15)
        limit = self._role_limit()
        if limit is not None:
            ax.axhline(limit, color="#a33", linestyle="--", linewidth=1)
            ax.annotate(f"limit {limit}", (0, limit), xytext=(2, 2), textcoords="offset points", fontsize=8, color="#a33")
        ax.set_ylim(0, max(max(counts), limit or 0, 1) * 1.2)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("seconds since the monitor started", fontsize=8)
        ax.set_ylabel("sessions", fontsize=8)
        ax.tick_params(labelsize=8)
        latest = self._latest
        lines = [f"Sessions ({self._limit}): peak {self.peak}",
                 f"When the monitor stopped: {latest['total']} session{'' if latest['total'] == 1 else 's'}"]
        if latest["total"]:
            lines[1] += " (" + ", ".join(f"{k} {v}" for k, v in sorted(latest["by_state"].items())) + ")"
            lines.append(textwrap.shorten("by application_name: " + ", ".join(
                f"{k} {v}" for k, v in sorted(latest["by_application"].items())), 95))
        ax.set_title("\n".join(lines), fontsize=9, loc="left")
        figure.set_figheight(2.2 + 0.15 * (len(lines) - 2))
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png")
        return png.getvalue()

    def _role_limit(self) -> int | None:
        prefix = f"role {self.roles[0]} limit " if self.roles else None
        return int(self._limit[len(prefix):]) if prefix and self._limit.startswith(prefix) else None


RECORD = 20_000  # polls kept for the chart: over an hour at the default interval


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

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return {**super()._repr_mimebundle_(**kwargs), "text/plain": repr(self), "text/html": self.static_html()}

    def static_html(self) -> str:
        """The control as it was displayed, drawn in HTML for readers where widgets do not run (fixed text)."""
        choices = " ".join(f"<b>[{escape(str(v))}]</b>" if v == self.slider.value else escape(str(v))
                           for v in self.slider.options)
        return (f'<div style="border-left:3px solid #ccc;padding-left:8px">{escape(self.slider.description)}: '
                f"{choices} <button disabled>Run</button><br>{self.result.value}<br>"
                "<small><i>A live control: run the notebook to pick a value and rerun the measurement.</i>"
                "</small></div>")

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
