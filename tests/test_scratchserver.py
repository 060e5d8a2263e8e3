"""The throwaway server of lesson 10: starts, accepts its role, refuses connections when stopped, starts
again with the same data, and leaves neither a directory nor a process behind when closed."""

from __future__ import annotations

import psutil
import psycopg
import pytest

from pgcourse.scratchserver import ScratchServer


def _postgres_processes(data) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def scratch():
    with ScratchServer() as server:
        yield server


def test_start_and_connect_as_its_role(scratch):
    assert scratch.running
    with psycopg.connect(scratch.url) as conn:
        user, db = conn.execute("SELECT current_user, current_database()").fetchone()
        super_ = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        method = conn.execute("SHOW password_encryption").fetchone()[0]
    assert (user, db, super_, method) == ("scratch", "scratch", False, "scram-sha-256")
    assert set(scratch.timings) == {"initdb", "start"} and all(t > 0 for t in scratch.timings.values())


def test_wrong_password_is_rejected(scratch):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(scratch.url.replace(scratch.password, "wrong"), connect_timeout=5)


def test_stop_refuses_then_start_serves_the_same_data(scratch):
    with psycopg.connect(scratch.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    port = scratch.port
    scratch.stop()
    assert not scratch.running
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(scratch.url, connect_timeout=5)
    scratch.start()
    assert scratch.running and scratch.port == port
    with psycopg.connect(scratch.url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]


def test_stop_ends_open_sessions(scratch):
    conn = psycopg.connect(scratch.url, autocommit=True)
    try:
        scratch.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
        scratch.start()


def test_close_removes_the_directory_and_leaves_no_process():
    server = ScratchServer().create()
    directory, data = server.dir, server.data
    assert directory.exists() and _postgres_processes(data)
    server.close()
    assert not directory.exists()
    assert _postgres_processes(data) == []
    server.close()  # a second close does nothing
    assert repr(server).endswith("closed>")


def test_close_after_stop_and_two_at_once():
    first, second = ScratchServer().create(), ScratchServer().create()
    try:
        assert first.port != second.port
        first.stop()
    finally:
        first.close()
        second.close()
    assert first.dir is None and second.dir is None


def test_a_failed_create_stops_the_server_and_deletes_the_directory(monkeypatch):
    made = []

    def fail(self):
        made.append((self.dir, self.data))
        raise RuntimeError("the role could not be made")

    monkeypatch.setattr(ScratchServer, "_make_role", fail)
    with pytest.raises(RuntimeError, match="the role could not be made"):
        with ScratchServer():  # __enter__ raises, so no __exit__: create() must clean up itself
            pass
    (directory, data), = made
    assert not directory.exists() and _postgres_processes(data) == []
