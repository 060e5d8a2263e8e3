"""`make lab` serves JupyterLab whose kernels have DATABASE_URL and reach the course server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from jupyter_client import BlockingKernelClient

from pgcourse.server import ROOT

TOKEN = "course-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else {}


def lab_port(runtime, lab: subprocess.Popen) -> int:
    """The port JupyterLab really listens on (another program may have taken the first one it tried)."""
    for info in runtime.glob("jpserver-*.json"):
        return json.loads(info.read_text())["port"]
    raise OSError("JupyterLab has not written its server info yet")


def pipe_holders(lab: subprocess.Popen) -> list[str]:
    """The processes still holding the write end of the lab's output pipe (its leftover children)."""
    ours = os.readlink(f"/proc/self/fd/{lab.stdout.fileno()}")  # pipe:[inode], the read end: same inode
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == ours for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                holders.append(f"{proc.name} {command[:200]}")
        except OSError:
            continue
    return holders


def test_lab_kernel_has_database_url_and_connects(tmp_path):
    runtime = tmp_path / "runtime"
    # PYTHONFAULTHANDLER: if JupyterLab does not stop, SIGABRT makes it print where each thread is.
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "DATABASE_URL": "postgresql://stale@elsewhere/db",
           "PYTHONFAULTHANDLER": "1"}
    # Output to a pipe, as `make lab | tee log` or a CI log: what pgcourse says before exec must arrive.
    lab = subprocess.Popen(
        [sys.executable, "-m", "pgcourse", "lab", "--no-browser", f"--ServerApp.port={free_port()}",
         "--ServerApp.port_retries=50", f"--IdentityProvider.token={TOKEN}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Read as it comes, on a thread: what was said stays said however the lab ends (a child that keeps
    # the pipe open, or a slow stop, must not lose it, as communicate() with a timeout did).
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(lab.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                port = lab_port(runtime, lab)
                api(port, "GET", "/api/status")
                break
            except (OSError, ValueError, KeyError):
                assert lab.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)
        kernel = api(port, "POST", "/api/kernels", {"name": "python3"})
        client = BlockingKernelClient()
        client.load_connection_file(str(runtime / f"kernel-{kernel['id']}.json"))
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            printed: list[str] = []
            hook = lambda msg: printed.append(msg["content"].get("text", ""))  # noqa: E731
            code = ("import os\nfrom pgcourse.preflight import check_database\n"
                    "print(os.environ['DATABASE_URL'].split('@')[1])\nprint(check_database(os.environ['DATABASE_URL']))")
            reply = client.execute_interactive(code, output_hook=hook, timeout=60)
        finally:
            client.stop_channels()
            api(port, "DELETE", f"/api/kernels/{kernel['id']}")
        assert reply["content"]["status"] == "ok", reply["content"]
        output = "".join(printed)
        assert "elsewhere" not in output  # the shell's stale DATABASE_URL did not take over
        assert output.startswith("127.0.0.1:") and "Connected to PostgreSQL" in output, output
    finally:
        stopped = time.monotonic()
        lab.terminate()
        try:
            lab.wait(timeout=60)
        except subprocess.TimeoutExpired:
            lab.send_signal(signal.SIGABRT)  # the faulthandler's dump of every thread goes to the pipe
            try:
                lab.wait(timeout=10)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait()
        took = time.monotonic() - stopped
        reader.join(timeout=10)
        left = pipe_holders(lab) if reader.is_alive() else []
        for holder in left:  # children of our lab, still running: end them
            os.kill(int(holder.split()[0]), signal.SIGKILL)
        reader.join(timeout=10)
        lab.stdout.close()
    said = "".join(lines)
    assert "Starting JupyterLab with DATABASE_URL=postgresql://learner:***@127.0.0.1:" in said, said[:2000]
    assert "The course server keeps running after JupyterLab exits" in said
    assert took < 60, f"JupyterLab did not stop within 60 s of SIGTERM; where its threads were:\n{said[-6000:]}"
    assert not left, f"JupyterLab stopped and left processes holding its output: {left}"
