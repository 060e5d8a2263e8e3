"""The bundled server: lifecycle, reset, and each bad situation triggered for real."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil
import psycopg
import pytest

from pgcourse import dataset, envfile, osuser, provision, target
from pgcourse.binaries import copy_embedded, find_binaries, reachable_by
from pgcourse.errors import CourseError, DatabaseUnavailable, ServerError
from pgcourse.preflight import check_database
from pgcourse.server import ADMIN, ROOT, Cluster
from tests.test_escape import plain_server

SCALE = 0.001  # 10 customers, 1,000 events: the lifecycle does not need the full data
root_only = pytest.mark.skipif(not osuser.is_root(), reason="exercises the root path (CI runs as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_dir(owner: pwd.struct_passwd | None = None) -> Path:
    """A temporary directory every user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pgcourse-test-"))
    path.chmod(0o755)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


@pytest.fixture
def make_cluster():
    made: list[tuple[Cluster, Path]] = []

    def make(base: Path | None = None, **kwargs) -> Cluster:
        base = base or open_dir()
        messages: list[str] = []
        kwargs.setdefault("port", free_port())
        cluster = Cluster(base, env_path=base / ".env", scale=SCALE, say=messages.append, **kwargs)
        cluster.messages = messages
        made.append((cluster, base))
        return cluster

    yield make
    for cluster, base in made:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    c = make_cluster()
    c.start()
    return c


def learner_url(c: Cluster) -> str:
    return envfile.read(c.env_path)["DATABASE_URL"]


def test_first_start_makes_roles_data_and_env(cluster):
    url = learner_url(cluster)
    assert url.startswith("postgresql://learner:") and url.endswith(f"@127.0.0.1:{cluster.port}/course")
    assert cluster.env_path.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(url) as conn:
        user, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert (user, superuser) == ("learner", False)
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 10
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1000
        assert conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()[0] >= 0
        assert conn.execute("SHOW TimeZone").fetchone()[0] == "UTC"
        limit = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (provision.LIMITED,))
        assert limit.fetchone()[0] == provision.LIMITED_CONNECTIONS
    with cluster.admin.connect() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects"):
        psycopg.connect(host="127.0.0.1", port=cluster.port, user=ADMIN, dbname="postgres", connect_timeout=5)
    postmaster = psutil.Process(cluster.status().pid)
    assert postmaster.username() == (osuser.SERVICE_USER if osuser.is_root() else osuser.current_user())


def test_limited_role_hits_its_connection_limit(cluster):
    url = envfile.read(cluster.env_path)["LIMITED_DATABASE_URL"]
    conns = [psycopg.connect(url) for _ in range(provision.LIMITED_CONNECTIONS)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            psycopg.connect(url)
    finally:
        for conn in conns:
            conn.close()


def test_stop_and_start_keep_data(cluster):
    with psycopg.connect(learner_url(cluster)) as conn:
        conn.execute("CREATE TABLE kept (x int)")
    assert cluster.stop() is True
    assert not cluster.status().running
    assert cluster.stop() is False
    started = time.perf_counter()
    cluster.start()
    print(f"start from stopped: {time.perf_counter() - started:.3f} s")
    with psycopg.connect(learner_url(cluster)) as conn:
        assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone()[0]


def test_reset_recreates_course_db_and_names_sessions(cluster):
    conn = psycopg.connect(learner_url(cluster), application_name="still-open")
    conn.execute("CREATE TABLE scratch (x int)")
    conn.commit()
    pid = conn.info.backend_pid
    ended = cluster.reset()
    assert [(s.pid, s.user, s.application) for s in ended] == [(pid, "learner", "still-open")]
    assert f"pid {pid}, learner (still-open)" in str(ended[0])
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(learner_url(cluster)) as fresh:
        assert fresh.execute("SELECT to_regclass('scratch')").fetchone()[0] is None
        assert fresh.execute("SELECT count(*) FROM customers").fetchone()[0] == 10


def test_port_taken_at_first_start_moves_to_next(make_cluster):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        c = make_cluster(port=taken)
        c.start()
    assert c.port != taken
    assert any(f"Port {taken} is taken" in m and f"uses port {c.port}" in m for m in c.messages)
    assert f"@127.0.0.1:{c.port}/" in learner_url(c)


def test_port_taken_at_restart_updates_env(cluster):
    old = cluster.port
    cluster.stop()
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAIT is no owner
        try:
            blocker.bind(("127.0.0.1", old))
            blocker.listen()
        except OSError:  # another program (a second test suite's server) took it first: taken all the same
            pass
        cluster.start()
    assert cluster.port != old
    assert any(f"Port {old} is taken" in m for m in cluster.messages)
    check_database(learner_url(cluster))  # the rewritten DATABASE_URL works


def test_stale_pidfile_after_kill_9(cluster):
    pid = cluster.status().pid
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=5) if psutil.pid_exists(pid) else None
    assert (cluster.data / "postmaster.pid").exists()
    cluster.start()
    assert any("stale postmaster.pid" in m for m in cluster.messages)
    check_database(learner_url(cluster))


def test_pidfile_naming_another_live_process(cluster):
    cluster.stop()
    pidfile = cluster.data / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{cluster.data}\n")  # a live pid that is not a postmaster
    cluster.start()
    assert any("stale postmaster.pid" in m for m in cluster.messages)
    assert cluster.status().running


def test_data_directory_of_another_major_version(cluster):
    cluster.stop()
    (cluster.data / "PG_VERSION").write_text("15\n")
    with pytest.raises(ServerError) as caught:
        cluster.start()
    text = caught.value.text
    assert "made by PostgreSQL 15" in text and f"are PostgreSQL {cluster.binaries.major}" in text
    assert "make db-destroy" in text and "PGCOURSE_BINDIR" in text


def test_binaries_missing(make_cluster, tmp_path):
    with pytest.raises(ServerError, match="binaries are missing: /nonexistent"):
        make_cluster(bindir="/nonexistent").start()
    with pytest.raises(ServerError, match="no initdb, pg_ctl, postgres, psql"):
        find_binaries(str(tmp_path))


def test_cli_reports_bad_situation_in_one_sentence(tmp_path):
    env = {**os.environ, "PGCOURSE_BINDIR": "/nonexistent", "PGCOURSE_STATE": str(tmp_path / "state"),
           "PGCOURSE_ENV": str(tmp_path / ".env")}
    result = subprocess.run([sys.executable, "-m", "pgcourse", "db", "start"], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "The PostgreSQL binaries are missing: /nonexistent (PGCOURSE_BINDIR) has no initdb, pg_ctl, postgres, psql.",
        "Fix: set PGCOURSE_BINDIR to a directory that has initdb, pg_ctl, postgres and psql"
        " (e.g. /usr/lib/postgresql/15/bin), or unset it to use the bundled server"]


def test_lost_env_gets_new_passwords(cluster):
    old = learner_url(cluster)
    cluster.env_path.unlink()
    cluster.start()
    new = learner_url(cluster)
    assert new != old
    check_database(new)
    with pytest.raises(DatabaseUnavailable, match="rejected the password"):
        check_database(old)


def test_database_url_problems_are_one_sentence(cluster):
    with pytest.raises(DatabaseUnavailable, match="DATABASE_URL is not set"):
        check_database(None)
    closed = free_port()
    with pytest.raises(DatabaseUnavailable, match=f"Nothing answers at 127.0.0.1:{closed}") as caught:
        check_database(f"postgresql://learner:x@127.0.0.1:{closed}/course")
    assert "make db-start" in caught.value.text
    wrong = learner_url(cluster).replace("@127.0.0.1", "x@127.0.0.1")
    with pytest.raises(DatabaseUnavailable, match="rejected the password for 'learner'"):
        check_database(wrong)
    with pytest.raises(DatabaseUnavailable, match="has no database 'nope'"):
        check_database(provision.with_dbname(learner_url(cluster), "nope"))
    assert check_database(learner_url(cluster)).startswith("Connected to PostgreSQL ")


def test_course_error_renders_without_traceback_in_ipython():
    error = DatabaseUnavailable("Nothing answers at 127.0.0.1:1.", "run `make db-start`")
    assert error._render_traceback_() == ["DatabaseUnavailable: Nothing answers at 127.0.0.1:1.",
                                          "Fix: run `make db-start`"]
    assert isinstance(error, CourseError)


def test_shell_database_url_does_not_take_over(cluster, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:else@db.example:5432/theirs")
    said: list[str] = []
    tgt = target.load(cluster.base, say=said.append)
    assert tgt.kind == "bundled" and tgt.database_url == learner_url(cluster)
    assert any("ignores it and uses .env" in m for m in said)


def test_provision_on_your_own_server(make_cluster, tmp_path):
    """A plain server with a password superuser stands in for the learner's own PostgreSQL."""
    admin_url, stop = plain_server(None)  # from the course's binaries, as another user when we are root
    env_file = tmp_path / ".env"
    env = {**os.environ, "PGCOURSE_ENV": str(env_file)}
    try:
        result = subprocess.run([sys.executable, "-m", "pgcourse", "db", "provision", admin_url, "--scale", str(SCALE)],
                                capture_output=True, text=True, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        values = envfile.read(env_file)
        assert values["COURSE_SERVER"] == "external"
        with psycopg.connect(values["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user, count(*) FROM customers GROUP BY 1").fetchone() == ("learner", 10)
        reset = subprocess.run([sys.executable, "-m", "pgcourse", "db", "reset"], capture_output=True, text=True,
                               env=env, cwd=ROOT)
        assert reset.returncode == 0 and "Recreated the database 'course'" in reset.stdout, reset.stderr
        status = subprocess.run([sys.executable, "-m", "pgcourse", "db", "start"], capture_output=True, text=True,
                                env=env, cwd=ROOT)
        assert "uses your own server" in status.stdout
    finally:
        stop()


@root_only
def test_checkout_the_service_user_cannot_reach(make_cluster):
    private = Path(tempfile.mkdtemp(prefix="pgcourse-private-"))  # 0700, owned by root
    base = private / "course"
    base.mkdir()
    try:
        c = make_cluster(base)
        assert c.state.is_relative_to(Path(pwd.getpwnam(osuser.SERVICE_USER).pw_dir))
        c.start()
        assert any(f"cannot reach {base}, so the server's data lives in {c.state}" in m for m in c.messages)
        check_database(learner_url(c))
    finally:
        shutil.rmtree(private, ignore_errors=True)


@root_only
def test_copied_binaries_run_for_the_service_user(tmp_path):
    user = osuser.ensure_service_user()
    dest = open_dir()
    try:
        copy = copy_embedded(find_binaries(), dest)
        result = osuser.run_as(user, [copy["psql"], "--version"], capture_output=True, text=True)
        assert result.returncode == 0 and "PostgreSQL" in result.stdout, result.stderr
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@root_only
def test_runs_as_an_unprivileged_user():
    """The same lifecycle in a process that is not root: no service user, no special steps."""
    name = "pgcourse-learner"
    learner = osuser.ensure_service_user(name, say=lambda _m: None)
    base = open_dir(learner)
    bindir = str(reachable_by(learner, find_binaries()).bindir)  # a private checkout: the server's own fallback
    # The child inherits what this process has loaded; in a checkout other users cannot enter (mode 700),
    # it could not read the package's SQL files itself, as no learner's own checkout would forbid.
    dataset.scripts()
    provision.tools_sql()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child drops root for good, then runs the lifecycle
        report: dict = {}
        try:
            os.close(read)
            os.setgid(learner.pw_gid)
            os.setgroups([])
            os.setuid(learner.pw_uid)
            os.environ["HOME"] = learner.pw_dir
            c = Cluster(base, env_path=base / ".env", scale=SCALE, port=free_port(), bindir=bindir,
                        say=lambda m: None)
            status = c.start()
            with psycopg.connect(learner_url(c)) as conn:
                report["user"] = conn.execute("SELECT current_user").fetchone()[0]
            report["owner"] = psutil.Process(status.pid).username()
            report["ended"] = [s.pid for s in c.reset()]
            report["stopped"] = c.stop() and not c.status().running
            report["restarted"] = c.start().running and check_database(learner_url(c)).startswith("Connected")
            c.destroy()
        except BaseException:  # report everything to the parent
            report["error"] = traceback.format_exc()
        finally:
            os.write(write, json.dumps(report).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read() or "{}")
    os.waitpid(child, 0)
    shutil.rmtree(base, ignore_errors=True)
    assert report == {"user": "learner", "owner": name, "ended": [], "stopped": True, "restarted": True}
