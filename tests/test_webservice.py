"""The web service launcher and the load generator of lesson 09, on a tiny service of their own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from pgcourse import loadgen
from pgcourse.checks import with_params
from pgcourse.webservice import Service, exception_lines

ROOT = Path(__file__).resolve().parents[1]
APP = '''
import os

import psycopg
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/hold")
def hold():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("SELECT pg_sleep(0.05)")
    return {"held": True}


@app.get("/boom/{n}")
def boom(n: int):
    raise RuntimeError(f"boom at port {n}")
'''


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "tiny.py").write_text(textwrap.dedent(APP))
    return tmp_path


def test_a_service_starts_answers_counts_its_errors_and_stops(app_dir):
    with Service("tiny:app", app_dir=app_dir) as svc:
        pid = svc.pid
        assert svc.url.startswith("http://127.0.0.1:")
        mix = loadgen.Mix({"ok": lambda r: ("GET", "/health", None),
                           "boom": lambda r: ("GET", f"/boom/{r.randint(1000, 9999)}", None)},
                          {"ok": 0.5, "boom": 0.5}, seed=1)
        load = asyncio.run(loadgen.run(svc.url, mix, requests=40, concurrency=4, progress=False, label="tiny"))
        summary = load.summary()
        assert summary["requests"] == 40 and summary["ok"] + summary["failed"] == 40
        booms = sum(kind == "boom" for kind, _ in mix.requests(40))
        assert summary["errors"] == {"500 Internal Server Error": booms}
        assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
        # uvicorn logs a traceback after it has sent the 500: the last one may reach the log a moment after the answer
        deadline = time.monotonic() + 10
        while sum(svc.errors().values()) < booms and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.errors() == {"RuntimeError: boom at port N": booms}  # the varying number counts as one kind
    # uvicorn shuts down gracefully, then raises the signal again: the exit status says SIGTERM ended it
    assert svc.returncode == -signal.SIGTERM and svc.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "Application shutdown complete" in svc.log


@pytest.mark.usefixtures("checks_database")
def test_the_watch_sees_the_service_connections_by_application_name(app_dir):
    url = with_params(os.environ["DATABASE_URL"], application_name="tiny-service")
    others = [psycopg.connect(os.environ["DATABASE_URL"], application_name="not-the-service") for _ in range(10)]
    try:
        with Service("tiny:app", app_dir=app_dir, env={"DATABASE_URL": url}) as svc:
            mix = loadgen.Mix({"hold": lambda r: ("GET", "/hold", None)}, {"hold": 1.0})
            load = asyncio.run(loadgen.run(svc.url, mix, requests=30, concurrency=3, progress=False,
                                           watch=(os.environ["DATABASE_URL"], "tiny-service")))
    finally:
        for conn in others:
            conn.close()
    assert load.summary()["failed"] == 0
    # Three requests at a time, each connecting and closing: a sample every 10 ms sees at least one session. A
    # closed session stays listed while its backend exits, so a sample can see each request's old session beside
    # its next one: at most six. The ten sessions of another application_name are not counted.
    assert 1 <= load.peak_connections <= 6
    assert load.connections_after == 0


def test_a_service_that_cannot_start_says_why(app_dir):
    (app_dir / "broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(RuntimeError, match="(?s)exited with code.*no_such_module_here"):
        Service("broken:app", app_dir=app_dir).start()
    with pytest.raises(FileNotFoundError, match="No module"):
        Service("absent:app", app_dir=app_dir).start()


def test_a_service_killed_takes_its_workers_with_it(app_dir):
    svc = Service("tiny:app", app_dir=app_dir, workers=2).start()
    pids = svc.pids()
    assert len(pids) >= 3  # the supervisor and two workers
    assert svc.stop(sig=signal.SIGKILL, timeout=5) == -signal.SIGKILL
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_service_left_running_stops_when_the_interpreter_exits(app_dir):
    # A kernel that ends (or restarts) after a cell failed between start() and stop() must not leave uvicorn behind.
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pgcourse.webservice import Service\n"
              f"svc = Service('tiny:app', app_dir={str(app_dir)!r}).start()\n"
              "print(svc.pids()[0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(done.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_service_stops_when_the_interpreter_that_started_it_is_killed(app_dir):
    # A kernel killed outright (SIGKILL, out of memory) runs no atexit handler: the service sees its lifeline end.
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pgcourse.webservice import Service\n"
              f"svc = Service('tiny:app', app_dir={str(app_dir)!r}, workers=2).start()\n"
              "print(*svc.pids(), flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 3  # the supervisor and two workers
    finally:
        parent.kill()
        parent.wait()
    import psutil

    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=20)
    assert not alive, f"still running after their parent was killed: {alive}"


def test_exception_lines_take_the_last_line_of_each_traceback():
    log = textwrap.dedent('''\
        INFO:     127.0.0.1:5000 - "GET / HTTP/1.1" 500
        Traceback (most recent call last):
          File "x.py", line 1, in <module>
            connect()
        psycopg.OperationalError: connection failed: connection to server at "10.1.2.3", port 5432 failed
        INFO:     done
        ''')
    assert exception_lines(log) == {'psycopg.OperationalError: connection failed: connection to server at'
                                     ' "127.0.0.1", port N failed': 1}
