"""Fixtures shared by the tests: a fresh clone of the course database for the exercise checks, and a
scratch bundled server for rooms bigger than the course server allows."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgcourse import envfile, target
from pgcourse.notebooks import fresh_database
from pgcourse.server import Cluster

ROOM_SERVER_SCALE = 0.001  # 10 customers, 1,000 events: a room's tests need the tables, not their rows


@pytest.fixture(scope="module")
def checks_database(request):
    """DATABASE_URL pointing at a fresh clone of the course database, for one test module."""
    tgt = target.load(say=lambda *_: None)
    with fresh_database(tgt, request.module.__name__.rsplit(".", 1)[-1]) as name, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", tgt.environment(name)["DATABASE_URL"])
        yield name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RoomServer:
    """A bundled server of the tests' own: `target` as target.load gives the course's, and the room file
    its starts read (a Cluster outside the checkout takes max_connections from <base>/.room/room.json)."""

    cluster: Cluster
    target: target.Target

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def room_file(self) -> Path:
        return self.cluster.base / ".room" / "room.json"

    def cli_env(self, room_file: Path) -> dict[str, str]:
        """The environment in which `python -m pgcourse room ...` works on this server and this room file."""
        return {**os.environ, "PGCOURSE_ROOM_FILE": str(room_file), "PGCOURSE_STATE": str(self.cluster.state),
                "PGCOURSE_ENV": str(self.cluster.env_path), "PGCOURSE_PORT": str(self.port)}


@pytest.fixture(scope="session")
def room_server():
    """A room of a few learners needs more connections than a fresh course server allows (each learner
    counts its role's limit, its limited role's and its demo roles' budget: room.needed_connections), and
    growing the shared course server would restart it under everyone. Such rooms live here instead: a
    bundled server in a temporary folder (small dataset, free port), started once for the session, which
    room.create(..., cluster=room_server.cluster, restart=True) may grow and restart (no one else uses
    it); destroyed at the end, also after a failure."""
    base = Path(tempfile.mkdtemp(prefix="pgcourse-room-server-"))
    base.chmod(0o755)  # the server's user (as root: pgcourse) must reach it
    with pytest.MonkeyPatch.context() as mp:  # its data under base, whatever PGCOURSE_STATE the run has
        mp.delenv("PGCOURSE_STATE", raising=False)
        cluster = Cluster(base, env_path=base / ".env", port=free_port(), scale=ROOM_SERVER_SCALE, say=lambda *_: None)
    assert cluster.state.is_relative_to(base) or cluster.moved_out, cluster.state  # never the course server's
    try:
        cluster.start()
        values = envfile.read(cluster.env_path)
        yield RoomServer(cluster, target.Target("bundled", values["DATABASE_URL"], values["LIMITED_DATABASE_URL"],
                                                cluster.admin, cluster))
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
