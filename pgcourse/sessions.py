"""Two (or more) sessions side by side: run statements step by step and show the interleaving.

Each session is a psycopg connection with its own worker thread. `run` sends a statement and
waits up to `block_after` seconds: a statement still waiting then (for a lock) is recorded as
blocked and keeps running in its thread, so the notebook never hangs; the session's next step
first waits for it to finish. The timeline shows, step by step, what each session ran and saw.
"""

from __future__ import annotations

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

    def __init__(self, url: str, names: tuple[str, ...] = ("A", "B"), *, block_after: float = 0.5):
        self.block_after = block_after
        self.names = names
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
        shown = " ".join(sql.split()) + (f"  with {', '.join(map(str, params))}" if params else "")
        step = Step(name, shown)
        self.steps.append(step)
        future = self._workers[name].submit(self._execute, name, sql, params)
        try:
            return self._settle(step, future.result(timeout=self.block_after))
        except FutureTimeout:
            step.blocked, step.outcome = True, "waits (blocked)"
            self._pending[name] = (future, step)
            return None

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

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
