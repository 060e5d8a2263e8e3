"""A JupyterHub serves a room: each learner's server gets that learner's DATABASE_URL from the room file.

The hub is JupyterHub from PyPI (pinned in requirements.txt) with its proxy, configurable-http-proxy,
from the npm registry (pinned in tools/hub-proxy/, installed into .hub/ by tools/hub-proxy.sh). The
configuration is docs/jupyterhub_config.py, the one docs/jupyterhub.md tells a deployer to use; the test
only adds what a test needs: a local process spawner that needs no system users, the dummy
authenticator, free ports on 127.0.0.1, and an admin token for the REST API. Three learners get a room
made with `pgcourse.room.create`; a fourth user is not in it and is refused a server. Three learners need
more connections than a fresh course server allows (room.needed_connections), so the room lives on the
tests' scratch bundled server (`room_server` in tests/conftest.py), which room.create may grow and
restart: the learners' servers connect there, with the URLs of its room file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import psutil
import pytest
import websocket

from pgcourse import room
from pgcourse.server import ROOT

HUB_CONFIG = ROOT / "docs" / "jupyterhub_config.py"
PROXY_SCRIPT = ROOT / "tools" / "hub-proxy.sh"
BIN = Path(sys.executable).parent  # the course's venv: jupyterhub, jupyterhub-singleuser
LEARNERS = 3
CONNECTION_LIMIT = 5  # per learner role: with its limited role and its demo budget, room.needed_connections
# Seconds the hub may take to answer and to have every learner's server up (each kernel then has 90 s).
# The run costs about 40 s of CPU (the hub, 3 servers and 3 kernels each start a Python): it took 57 s
# beside other suites at a load of 10 on 2 cores, 245 s at a load of 26. The bound fails a hang, not a
# busy machine.
DEADLINE = 300

pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_command() -> str:
    """The proxy's path from tools/hub-proxy.sh; outside CI a skip (in CI a failure) saying what is missing."""
    done = subprocess.run(["sh", str(PROXY_SCRIPT)], capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        return done.stdout.strip().splitlines()[-1]
    said = done.stderr.strip() or done.stdout.strip()
    if done.returncode in (3, 4) and not os.environ.get("CI"):
        pytest.skip(f"JupyterHub's proxy cannot be installed here: {said}")
    pytest.fail(f"tools/hub-proxy.sh exited {done.returncode}: {said}", pytrace=False)


class Hub:
    """A JupyterHub process with the course's config, its proxy, and what it spawns; all stopped on exit."""

    def __init__(self, work: Path, room_file: Path, proxy: str):
        self.work, self.token = work, secrets.token_hex(32)
        self.port, hub_port, api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "homes").mkdir()
        config = work / "jupyterhub_test_config.py"
        config.write_text("\n".join([
            "c = get_config()  # noqa: F821",
            f"load_subconfig({str(HUB_CONFIG)!r})  # noqa: F821 (the deployer's config, then the test's choices)",
            "c.JupyterHub.spawner_class = 'jupyterhub.spawner.SimpleLocalProcessSpawner'",
            "c.JupyterHub.authenticator_class = 'jupyterhub.auth.DummyAuthenticator'",
            f"c.SimpleLocalProcessSpawner.home_dir_template = {str(work / 'homes' / '{username}')!r}",
            f"c.Spawner.cmd = [{str(BIN / 'jupyterhub-singleuser')!r}]",
            f"c.Spawner.args = {['--allow-root'] if os.geteuid() == 0 else []!r}  # a root hub's servers run as root",
            "c.Spawner.env_keep = ['PATH', 'LANG']",
            f"c.Spawner.start_timeout = c.Spawner.http_timeout = {DEADLINE}  # a busy machine is slow, not broken",
            f"c.JupyterHub.bind_url = {self.url!r}",
            f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{api_port}'",
            f"c.ConfigurableHTTPProxy.command = [{proxy!r}]",
            f"c.ConfigurableHTTPProxy.pid_file = {str(work / 'proxy.pid')!r}",
            f"c.JupyterHub.db_url = 'sqlite:///{work / 'jupyterhub.sqlite'}'",
            f"c.JupyterHub.cookie_secret_file = {str(work / 'cookie_secret')!r}",
            f"c.JupyterHub.services = [{{'name': 'course-test', 'api_token': {self.token!r}}}]",
            "c.JupyterHub.load_roles = [{'name': 'admin', 'services': ['course-test']}]",
        ]) + "\n")
        # A stale DATABASE_URL in the hub's own environment must reach no learner.
        env = {**os.environ, "PGCOURSE_ROOM_FILE": str(room_file), "DATABASE_URL": "postgresql://stale@elsewhere/db"}
        self.log = (work / "jupyterhub.log").open("w")
        self.process = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(config)], cwd=work, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.work / "jupyterhub.log").read_text(errors="replace")

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
        """A REST call through the proxy with the admin token: (status, JSON body)."""
        request = urllib.request.Request(self.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except OSError:  # not listening yet (or any more)
            return 0, {}
        try:
            return status, json.loads(text) if text else {}
        except ValueError:
            return status, {"text": text.decode(errors="replace")[:500]}

    def watch(self) -> None:
        """Remember every process the hub has started so far (proxy, servers, kernels), to check they end."""
        try:
            for p in [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]:
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def server_ready(self, name: str) -> bool:
        """Is `name`'s server up? A failure if the hub gave up on it (no server, none pending)."""
        server = self.request("GET", f"/hub/api/users/{name}")[1].get("servers", {}).get("")
        assert server, f"the hub gave up starting {name}'s server:\n{self.log_text()[-3000:]}"
        return bool(server.get("ready"))

    def wait_until(self, what: str, ready, deadline: float):
        while True:
            self.watch()
            assert self.process.poll() is None, f"the hub exited while waiting for {what}:\n{self.log_text()[-3000:]}"
            value = ready()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} did not happen in time:\n{self.log_text()[-3000:]}"
            time.sleep(0.3)

    def stop(self) -> list[str]:
        """Stop the hub (which stops its servers and its proxy); kill what is left; name what was left."""
        self.watch()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        left = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {p.pid}: {' '.join(p.cmdline())[:200]}")
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        return left


def ours(work: Path, proxy: str) -> list[str]:
    """Processes still running from this hub, found by a scan of every process as `ps` would: working
    folder, command line or environment naming the test's folder."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            if str(work) in text or (proxy in text and str(work) in " ".join(p.environ().values())):
                found.append(f"pid {p.pid}: {text[:200]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def run_in_kernel(hub: Hub, user: str, *codes: str, timeout: float = 90) -> list[tuple[str, list[dict]]]:
    """Start a kernel in `user`'s server through the hub's proxy, run each of `codes` in turn over the
    kernel's websocket, delete the kernel; per code, what it printed (stdout, stderr) and its errors."""
    status, kernel = hub.request("POST", f"/user/{user}/api/kernels", {"name": "python3"})
    assert status == 201, (status, kernel)
    url = f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{kernel['id']}/channels"
    socket = websocket.create_connection(url, header=[f"Authorization: token {hub.token}"], timeout=timeout,
                                         suppress_origin=True)
    try:
        return [execute(socket, code, user, time.monotonic() + timeout) for code in codes]
    finally:
        socket.close()
        hub.request("DELETE", f"/user/{user}/api/kernels/{kernel['id']}")


def execute(socket: websocket.WebSocket, code: str, user: str, deadline: float) -> tuple[str, list[dict]]:
    """One execute_request (Jupyter messaging protocol 5.3, JSON over the websocket) and its outcome."""
    msg_id = uuid.uuid4().hex
    socket.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "course-test",
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    printed, errors, replied, idle = [], [], False, False
    while not (replied and idle):
        assert time.monotonic() < deadline, f"the kernel of {user} did not finish in time"
        message = json.loads(socket.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            printed.append(content["text"])
        elif kind == "error":
            errors.append({"ename": content["ename"], "evalue": content["evalue"]})
        elif kind == "execute_reply":
            replied = True
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return "".join(printed), errors


def environment_check() -> str:
    """Lesson 00's environment check, as the notebook has it: the first code cell under the heading
    'Check your environment' (the setup cell: DATABASE_URL read, then one connection)."""
    nb = nbformat.read(ROOT / "notebooks" / "00_welcome.ipynb", as_version=4)
    under = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            under = under or cell.source.startswith("## Check your environment")
        elif under and "check_database" in cell.source:
            return cell.source
    raise AssertionError("lesson 00 has no code cell calling check_database under '## Check your environment'")


@pytest.fixture
def room_of_three(room_server):
    """Three learners with unique names made by pgcourse.room.create on the scratch server, in the room
    file its starts read (a restart to grow it keeps the room's max_connections); dropped afterwards
    (roles and databases), also when the test fails."""
    admin = room_server.target.admin
    tag = secrets.token_hex(3)
    names = [f"hub{tag}{i}" for i in range(1, LEARNERS + 1)]
    path = room_server.room_file
    assert not path.exists(), f"another test left a room on the scratch server: {path}"
    try:
        made = room.create(admin, names, host="127.0.0.1", port=room_server.port, kind="bundled",
                           connection_limit=CONNECTION_LIMIT, say=lambda *_: None, path=path,
                           cluster=room_server.cluster, restart=True)
        yield made, path, f"hub{tag}x"
    finally:  # also after a create that failed half-way: the room file lists whom it made
        if path.exists():
            room.drop(admin, room.Room.load(path), say=lambda *_: None, path=path)


def test_hub_gives_each_learner_their_database(tmp_path, room_of_three):
    made, room_file, stranger = room_of_three
    names = sorted(made.learners)
    proxy = proxy_command()
    work = tmp_path / "hub"
    work.mkdir()
    hub = Hub(work, room_file, proxy)
    try:
        start = time.monotonic()
        deadline = start + DEADLINE
        phases: dict[str, float] = {}
        hub.wait_until("the hub's API answering through its proxy",
                       lambda: hub.request("GET", "/hub/api/", timeout=5)[0] == 200,
                       deadline)
        phases["hub up"] = time.monotonic() - start
        status, created = hub.request("POST", "/hub/api/users", {"usernames": [*names, stranger]})
        assert status == 201, (status, created)

        # A user who is not in the room gets no server, and the refusal says why.
        status, refused = hub.request("POST", f"/hub/api/users/{stranger}/server")
        assert status == 403 and "is not a learner of this room" in refused.get("message", ""), (status, refused)

        with ThreadPoolExecutor(len(names)) as pool:  # all three at once; each answer 201 (up) or 202 (starting)
            started = list(pool.map(lambda n: hub.request("POST", f"/hub/api/users/{n}/server"), names))
        assert all(status in (201, 202) for status, _ in started), started
        for name in names:
            hub.wait_until(f"{name}'s server ready", lambda n=name: hub.server_ready(n), deadline)

        phases["servers ready"] = time.monotonic() - start
        # Each learner's kernel sees that learner's role and database, and the room's variables; the first
        # learner's kernel runs lesson 00's environment check first, read from the notebook. In parallel.
        probe = ("import os, psycopg\n"
                 "with psycopg.connect(os.environ['DATABASE_URL']) as conn:\n"
                 "    print(*conn.execute('SELECT current_user, current_database()').fetchone(),\n"
                 "          os.environ['COURSE_LEARNER'], os.environ['COURSE_CONNECTION_LIMIT'])\n")
        codes = {name: [environment_check(), probe] if name == names[0] else [probe] for name in names}
        with ThreadPoolExecutor(len(names)) as pool:
            ran = dict(zip(names, pool.map(lambda n: run_in_kernel(hub, n, *codes[n]), names), strict=True))
        assert not [errors for results in ran.values() for _, errors in results if errors], ran
        learner = made.learners
        seen = {name: results[-1][0].split() for name, results in ran.items()}
        assert seen == {n: [learner[n].role, learner[n].database, n, str(CONNECTION_LIMIT)] for n in names}, seen
        assert len({(role, db) for role, db, *_ in seen.values()}) == LEARNERS
        checked = ran[names[0]][0][0].splitlines()
        assert "Exception reporting mode: Minimal" in checked, checked
        connected = [line for line in checked if line.startswith("Connected to PostgreSQL ")]
        assert connected and connected[0].endswith(f" as {learner[names[0]].role}."), checked
        phases["kernels answered"] = time.monotonic() - start
        print(connected[0], {phase: round(seconds, 1) for phase, seconds in phases.items()})
        for name in names:  # stop the servers through the API, as an instructor's cull would
            status, body = hub.request("DELETE", f"/hub/api/users/{name}/server")
            assert status in (202, 204), (name, status, body)
        hub.wait_until("every server stopped",
                       lambda: all(not hub.request("GET", f"/hub/api/users/{n}")[1].get("servers") for n in names),
                       time.monotonic() + 30)
    finally:
        left = hub.stop()
    assert not left, f"processes the hub left running (killed now): {left}"
    still = ours(work, proxy)
    assert not still, f"processes still running after the hub stopped: {still}"
    log = hub.log_text()
    passwords = [urlsplit(made.learners[n].env[key]).password for n in names for key in ("DATABASE_URL", "LIMITED_DATABASE_URL")]
    assert not [p for p in passwords if p in log], "a learner's password is in the hub's log"

