"""Two (or more) sessions side by side: run statements step by step and show the interleaving.

Each session is a psycopg connection with its own worker thread. `run` sends a statement and
waits until it ends or until the server reports it waiting for a lock (`pg_blocking_pids`, read
by an observer connection): such a statement is recorded as blocked and keeps running in its
thread, so the notebook never hangs; the session's next step first waits for it to finish.
Nothing is judged by a timer, so a busy machine changes no step: a statement that is merely slow
is waited for, and one whose session has a short `lock_timeout` is waited for until the server
ends it. The timeline shows, step by step, what each session ran and saw.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import pandas as pd
import psycopg
from psycopg.conninfo import make_conninfo


@dataclass
class Step:
    session: str
    sql: str
    outcome: str = ""
    blocked: bool = False


class Sessions:
    """Named connections driven step by step; `timeline()` shows what each one did, in order."""

    BLOCKED = """SELECT cardinality(pg_blocking_pids(%s)) > 0"""

    def __init__(self, url: str, names: tuple[str, ...] = ("A", "B"), *, patience: float = 60.0):
        self.patience = patience  # a statement neither done nor waiting for a lock after this: "still running"
        self.names = names
        # the observer reads the server's view of the sessions; its name keeps it out of 'session %'
        self.observer = psycopg.connect(make_conninfo(url, application_name="sessions observer"), autocommit=True)
        # autocommit: every BEGIN and COMMIT is a visible step of the script, none is implicit
        self.conns = {n: psycopg.connect(make_conninfo(url, application_name=f"session {n}"), autocommit=True)
                      for n in names}
        self._workers = {n: ThreadPoolExecutor(1, thread_name_prefix=f"session-{n}") for n in names}
        self._pending: dict[str, tuple[Future, Step]] = {}
        self.steps: list[Step] = []
        self.results: dict[str, object] = {}

    def __getitem__(self, name: str) -> psycopg.Connection:
        return self.conns[name]

    def pid(self, name: str) -> int:
        return self.conns[name].info.backend_pid

    def run(self, name: str, sql: str, params=None) -> object:
        """Run one statement in session `name`; return its rows (or None), or the error it raised."""
        self.finish(name)
        lock_timeout = self._lock_timeout(name)
        shown = " ".join(sql.split()) + (f"  with {', '.join(map(str, params))}" if params else "")
        step = Step(name, shown)
        self.steps.append(step)
        if isinstance(lock_timeout, psycopg.Error):  # the server had ended the session: that is this step's answer
            return self._settle(step, lock_timeout)
        pid = self.pid(name)
        future = self._workers[name].submit(self._execute, name, sql, params)
        deadline = time.monotonic() + self.patience
        while time.monotonic() < deadline:
            try:
                return self._settle(step, future.result(timeout=0.01))
            except FutureTimeout:
                pass
            if self.observer.execute(self.BLOCKED, (pid,)).fetchone()[0]:
                if 0 < lock_timeout <= 10:  # the server itself ends this wait soon: show how it ends
                    return self._settle(step, future.result(timeout=lock_timeout + 30))
                step.blocked, step.outcome = True, "waits (blocked)"
                self._pending[name] = (future, step)
                return None
        step.blocked, step.outcome = True, "still running"
        self._pending[name] = (future, step)
        return None

    def _lock_timeout(self, name: str) -> float | psycopg.Error:
        """The session's lock_timeout in seconds (0: none), read before its next statement, while it is idle.

        If the server has ended the session meanwhile (a timeout, pg_terminate_backend), the error it sent is
        what the next statement would have received: it is returned, and run() reports it as that step's.
        """
        conn = self.conns[name]
        try:  # SHOW takes no snapshot, so it changes nothing in the transaction the next step belongs to
            shown = conn.execute("SHOW lock_timeout").fetchone()[0]
        except psycopg.Error as exc:
            return exc if conn.closed else 0.0  # else: an aborted transaction answers nothing but ROLLBACK
        match = re.fullmatch(r"(\d+)\s*(ms|s|min|h|d)?", shown.strip())
        if not match:
            return 0.0
        return int(match.group(1)) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}[match.group(2) or "ms"]

    def finish(self, name: str, timeout: float = 10) -> object:
        """Wait for a blocked statement of `name` to end; record what it finally did."""
        if name not in self._pending:
            return None
        future, step = self._pending.pop(name)
        started = time.perf_counter()
        result = future.result(timeout=timeout)
        self.steps.append(Step(name, f"... {step.sql[:40]}", "", False))
        outcome = self._settle(self.steps[-1], result)
        self.steps[-1].outcome = f"resumed: {self.steps[-1].outcome}"
        self.results[name] = (outcome, time.perf_counter() - started)
        return outcome

    def _execute(self, name: str, sql: str, params):
        try:
            cur = self.conns[name].execute(sql, params)
            return cur.fetchall() if cur.description else f"{cur.statusmessage}"
        except psycopg.Error as exc:
            return exc

    @staticmethod
    def _settle(step: Step, result) -> object:
        if isinstance(result, psycopg.Error):
            step.outcome = f"ERROR {result.sqlstate}: {str(result).strip().splitlines()[0]}"
        elif isinstance(result, list):
            step.outcome = ", ".join(str(tuple(r) if len(r) > 1 else r[0]) for r in result) or "(no rows)"
        else:
            step.outcome = str(result)
        return result

    def timeline(self) -> pd.DataFrame:
        """One row per step, one column per session: the statement and what came of it."""
        rows = [{n: (f"{s.sql}  →  {s.outcome}" if s.session == n else "") for n in self.names} for s in self.steps]
        frame = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="step"))
        return frame

    def close(self) -> None:
        """Cancel whatever still waits, and close every connection."""
        for name, (future, _) in list(self._pending.items()):
            self.conns[name].cancel_safe()
            future.exception(timeout=5)
        self._pending.clear()
        for name in self.names:
            self._workers[name].shutdown(wait=True)
            self.conns[name].close()
        self.observer.close()

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def client_ports() -> set[int] | None:
    """Local TCP ports of this process's (and its children's) connected sockets; None where they
    cannot be read (no permission, or a platform that hides them)."""
    try:
        import psutil

        procs = [psutil.Process()]
        procs += procs[0].children(recursive=True)
        ports: set[int] = set()
        for proc in procs:
            try:
                ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr}
            except psutil.NoSuchProcess:
                continue
        return ports
    except Exception:  # noqa: BLE001 - the caller falls back to counting the whole database
        return None


def own_sessions(conn: psycopg.Connection) -> list[tuple[int, str]] | None:
    """(pid, application_name) of this process's client sessions in conn's database, matched by the
    client port the server sees; None when sessions cannot be told apart that way (a Unix socket,
    or sockets this process cannot read)."""
    ports = client_ports()
    rows = conn.execute("SELECT pid, coalesce(application_name, ''), client_port FROM pg_stat_activity"
                        " WHERE datname = current_database() AND backend_type = 'client backend'"
                        " AND pid <> pg_backend_pid()").fetchall()
    if ports is None or conn.info.host.startswith("/"):  # over a Unix socket, the server sees no client port
        return None
    return [(pid, app) for pid, app, port in rows if port in ports]


def sessions_left(url: str, wait: float = 5.0) -> int:
    """This notebook's client sessions still connected to the URL's database, not counting the one
    that asks. Sessions of other notebooks, terminals or tools on the same database do not count.

    A closed connection's server process ends a moment after the client lets go, so this polls the
    server (up to `wait` seconds) for the count to reach zero before it answers. Where the server
    cannot tell this process's sessions apart (a Unix socket), it counts every client session of
    the database.
    """
    deadline = time.monotonic() + wait
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            own = own_sessions(conn)
            if own is not None:
                left = len(own)
            else:
                left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()[0]
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)
