"""A web service run for real: uvicorn in its own process, started and stopped by a notebook or a check.

The service runs in a subprocess, not in the notebook's event loop: an in-process ASGI transport would
call the application directly, with no sockets, no uvicorn, no worker processes and no shutdown signal,
which is exactly what lesson 09 measures. `Service` picks a free port on 127.0.0.1, starts
`python -m uvicorn module:app`, waits until the service answers, keeps everything it prints in a log
file, and stops it with a signal, as a process manager would.
"""

from __future__ import annotations

import atexit
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["Service", "free_port", "exception_lines"]

START_TIMEOUT = 30.0  # seconds for uvicorn, the imports and the lifespan's startup (a pool filling up)

# The services of this process that are still running. The child runs in a session of its own (so that a
# signal reaches it and its workers alone), which also means that it outlives a kernel that ends or
# restarts while a cell between start() and stop() failed: stop them all when this interpreter exits.
_RUNNING: set[Service] = set()

# A kernel killed outright (SIGKILL, a crash, an out-of-memory kill) runs no atexit handler. So the child
# also holds the reading end of a pipe whose writing end only this process has: when this process is gone,
# the read sees end-of-file, and the child shuts itself down (SIGTERM, then SIGKILL of its group).
_WATCHED_UVICORN = """
import os, signal, sys, threading, time
fd, grace = int(sys.argv[1]), float(sys.argv[2])
def watch():
    try:
        os.read(fd, 1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace + 5)
    os.killpg(os.getpid(), signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[3:]]
from uvicorn.main import main
main()
"""


@atexit.register
def _stop_all() -> None:
    for service in list(_RUNNING):
        try:
            service.stop(timeout=5.0)
        except Exception:
            pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Parts of an exception's message that differ between runs of the same failure: they are replaced, so
# that one cause counts as one kind of error.
_VARYING = [
    (re.compile(r"\b(?:port|pid|PID) \d+"), lambda m: m.group(0).split()[0] + " N"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), lambda m: "127.0.0.1"),
    (re.compile(r"0x[0-9a-fA-F]+"), lambda m: "0x..."),
    (re.compile(r'"/[^"]*"'), lambda m: '"<path>"'),
]


def exception_lines(log: str) -> collections.Counter:
    """How often each exception ended a traceback in this log: 'module.Class: first line of the message'."""
    found: collections.Counter = collections.Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith((" ", "\t")) or lines[j].strip() in ("", "^", "~")):
            j += 1
        if j < len(lines) and not lines[j].startswith(("During handling", "The above exception")):
            text = lines[j].strip()
            for pattern, repl in _VARYING:
                text = pattern.sub(repl, text)
            found[text] += 1
    return found


class Service:
    """`python -m uvicorn <app>` on 127.0.0.1 in a subprocess: started, watched, stopped.

    `app` is uvicorn's "module:attribute"; `app_dir` the folder that holds the module; `env` is added
    to this process's environment for the child (DATABASE_URL, pool sizes ...).
    """

    def __init__(self, app: str, *, app_dir: str | os.PathLike, env: dict[str, str] | None = None,
                 workers: int = 1, graceful_timeout: float = 5.0, ready_path: str = "/health",
                 port: int | None = None) -> None:
        self.app, self.app_dir, self.env = app, Path(app_dir), dict(env or {})
        self.workers, self.graceful_timeout, self.ready_path = workers, graceful_timeout, ready_path
        self.port = port or 0
        self.process: subprocess.Popen | None = None
        self._lifeline: int | None = None  # the pipe's writing end: closed (by exit or death), the child stops
        self.returncode: int | None = None
        self._log_file = None

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> Service:
        if self.process is not None:
            return self
        if not (self.app_dir / (self.app.split(":")[0].replace(".", "/") + ".py")).exists():
            raise FileNotFoundError(f"No module for {self.app!r} in {self.app_dir}: check the app name and the folder.")
        self.port = self.port or free_port()
        self._log_file = tempfile.NamedTemporaryFile(prefix="service-", suffix=".log", delete=False)
        watch_r, self._lifeline = os.pipe()
        command = [sys.executable, "-c", _WATCHED_UVICORN, str(watch_r), f"{self.graceful_timeout:g}",
                   self.app, "--app-dir", str(self.app_dir),
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
                   "--timeout-graceful-shutdown", f"{self.graceful_timeout:g}"]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(watch_r,))
        finally:
            os.close(watch_r)
        _RUNNING.add(self)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                _RUNNING.discard(self)
                os.close(self._lifeline)
                self._lifeline = None
                raise RuntimeError(f"The service {self.app} exited with code {code} before it answered."
                                   f" Its log ends:\n{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answered: an error status is still an answer
            except (OSError, ValueError):
                time.sleep(0.05)
        self.stop(sig=signal.SIGKILL)
        raise RuntimeError(f"The service {self.app} did not answer on {self.ready_path} within {timeout:g} s."
                           f" Its log ends:\n{self._tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send `sig` to uvicorn (it passes a shutdown on to its workers); kill the group after `timeout` s."""
        if self.process is None:
            return self.returncode
        process, self.process = self.process, None
        _RUNNING.discard(self)
        group = self._children(process.pid)
        if process.poll() is None:
            try:
                os.kill(process.pid, sig)
                process.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (workers of a killed master) goes too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        if group:
            import psutil

            psutil.wait_procs(group, timeout=5)
        self.returncode = process.returncode
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        return self.returncode

    @staticmethod
    def _children(pid: int) -> list:
        import psutil

        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log_file is not None:
            self._log_file.close()

    # -- what it did ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def pids(self) -> list[int]:
        """The uvicorn process and its children (the workers, with --workers)."""
        if self.process is None:
            return []
        return [self.process.pid] + [c.pid for c in self._children(self.process.pid)]

    @property
    def log(self) -> str:
        """Everything the service printed so far (uvicorn's lines, the app's logging, tracebacks)."""
        if self._log_file is None:
            return ""
        with open(self._log_file.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def errors(self) -> collections.Counter:
        """Exceptions in the service's log, counted by kind: 'psycopg.OperationalError: ...'."""
        return exception_lines(self.log)

    def _tail(self, lines: int = 25) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.process is not None else f"stopped ({self.returncode})"
        return f"<Service {self.app} {state}>"

    def __del__(self) -> None:
        try:
            if self._log_file is not None:
                os.unlink(self._log_file.name)
        except Exception:
            pass
