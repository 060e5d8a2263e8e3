"""The memory a notebook run takes: PSS of its kernel (with the kernel's children) and of the PostgreSQL server.

PSS (proportional set size, /proc/<pid>/smaps_rollup) shares each page among the processes that map it,
so the server's shared buffers count once, not once per backend. The notebook runs in a separate
process (`python -m pgcourse.footprint NOTEBOOK DBNAME`), optionally inside a memory cgroup or under an
address-space limit, as on a small machine; `make bench-memory` and tests/test_memory_limit.py use it.
Linux only (it reads /proc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import memory

INTERVAL = 0.25  # seconds between samples


def pss_bytes(pid: int) -> int:
    """The process's PSS, 0 when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def descendants(root: int) -> set[int]:
    """Every process below `root` (not root itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (parent := parent_of(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class ServerProcesses:
    """The server's processes that serve one database: the postmaster, its background processes, and the
    backends connected to that database (other databases' backends, e.g. other test runs, are left out)."""

    QUERY = ("SELECT pid FROM pg_stat_activity WHERE (backend_type <> 'client backend' OR datname = %s)"
             " AND pid <> pg_backend_pid()")

    def __init__(self, admin, dbname: str):
        self.conn = admin.connect()
        self.dbname = dbname
        own = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.postmaster = parent_of(own)  # None: the server runs on another machine or in a container

    def pids(self) -> list[int]:
        if self.postmaster is None:
            return []
        return [self.postmaster, *(pid for (pid,) in self.conn.execute(self.QUERY, (self.dbname,)))]

    def close(self) -> None:
        self.conn.close()


@dataclass
class Peaks:
    """Peak PSS in bytes: of kernel + children + server together (at one instant), and of each part alone."""

    total: int = 0
    kernel: int = 0
    server: int = 0
    samples: int = 0
    server_seen: bool = True


class Poller:
    """Calls `sample()` every `interval` seconds in a daemon thread, from the start of a `with` block to its end."""

    def __init__(self, interval: float, name: str = "poller"):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Sampler(Poller):
    """Samples the PSS of the processes below `root` and of the server every INTERVAL seconds, in a thread."""

    def __init__(self, root: int, server: ServerProcesses | None, interval: float = INTERVAL):
        super().__init__(interval, "pss-sampler")
        self.root, self.server = root, server
        self.peaks = Peaks(server_seen=server is not None and server.postmaster is not None)

    def sample(self) -> None:
        kernel = sum(pss_bytes(pid) for pid in descendants(self.root))
        server = sum(pss_bytes(pid) for pid in self.server.pids()) if self.server else 0
        peaks = self.peaks
        peaks.kernel, peaks.server = max(peaks.kernel, kernel), max(peaks.server, server)
        peaks.total, peaks.samples = max(peaks.total, kernel + server), peaks.samples + 1


@dataclass
class Cgroup:
    """A memory cgroup made for one run: its directory and cgroup version."""

    path: Path
    version: int

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def peak(self) -> int | None:
        """The cgroup's peak usage in bytes (resident memory and page cache), if the kernel keeps it."""
        text = self._read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes").strip()
        return int(text) if text.isdigit() else None

    def oom_kills(self) -> int:
        text = self._read("memory.events" if self.version == 2 else "memory.oom_control")
        return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), 0)


def _own_cgroups() -> list[tuple[int, Path]]:
    """This process's own memory cgroup directory for each cgroup version mounted (v1 first)."""
    own: dict[int, Path] = {}
    for version, directory in memory._cgroup_dirs(Path("/")):
        own.setdefault(version, directory)
    return sorted(own.items())


def _make_child(version: int, parent: Path, limit: int) -> Cgroup | None:
    if version == 2:
        try:  # the parent must hand the memory controller down to its children
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
        except OSError:
            return None
    child = parent / f"pgcourse-memory-{os.getpid()}"
    try:
        child.mkdir()
    except OSError:
        return None
    try:
        if version == 2:
            (child / "memory.max").write_text(str(limit))
            if (child / "memory.swap.max").exists():
                (child / "memory.swap.max").write_text("0")
        else:
            (child / "memory.limit_in_bytes").write_text(str(limit))
            if (child / "memory.memsw.limit_in_bytes").exists():
                (child / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no swapping out of it either
    except OSError:
        child.rmdir()
        return None
    return Cgroup(child, version)


@contextmanager
def memory_cgroup(limit: int) -> Iterator[Cgroup | None]:
    """A new child of this process's memory cgroup limited to `limit` bytes, removed afterwards; None where
    that is not allowed (an ordinary user, no memory controller, a cgroup v2 parent that cannot delegate it)."""
    made = next((cgroup for version, parent in _own_cgroups() if (cgroup := _make_child(version, parent, limit))),
                None)
    try:
        yield made
    finally:
        if made is not None:
            for _ in range(50):  # the run's processes may take a moment to be reaped
                try:
                    made.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


@dataclass
class Run:
    """One notebook run: its peaks, how it was limited, and whether every cell ran."""

    notebook: str
    peaks: Peaks
    limit: str
    ok: bool
    error: str = ""
    cgroup_peak: int | None = None
    oom_kills: int = 0
    output: dict = field(default_factory=dict)


def run_notebook(path: str | Path, target, *, machine: int | None = None, mechanism: str = "auto",
                 timeout: float = 600) -> Run:
    """Execute a notebook against a fresh clone of the course database (the file is not written), sampling PSS.

    With `machine` (bytes), the kernel and its children run as on a machine that size. mechanism: "cgroup"
    (a memory cgroup, which needs root or a delegated cgroup v2), "rlimit" (an address-space limit per
    process, as `prlimit --as`), "auto" (a cgroup where this process may make one, else rlimit) or "both"
    (rlimit, and a cgroup too where allowed). The lesson sees that limit when it reads the memory it has.
    """
    from .notebooks import fresh_database

    path = Path(path)
    command = [sys.executable, "-m", "pgcourse.footprint", str(path)]
    with fresh_database(target, path.stem) as dbname, _limited(machine, mechanism) as (cgroup, address_space, how):
        if cgroup is not None:
            command += ["--cgroup", str(cgroup.path)]
        if address_space is not None:
            command += ["--address-space", str(address_space)]
        server = ServerProcesses(target.admin, dbname)
        try:
            runner = subprocess.Popen([*command, dbname], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            with Sampler(runner.pid, server) as sampler:
                try:
                    stdout, stderr = runner.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    runner.kill()
                    stdout, stderr = runner.communicate()
                    stderr += f"\nthe run took longer than {timeout:.0f} s"
        finally:
            server.close()
        lines = stdout.strip().splitlines()
        output = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        ok = runner.returncode == 0 and output.get("ok", False)
        error = "" if ok else (output.get("error") or stderr.strip()[-2000:] or f"exit code {runner.returncode}")
        return Run(path.name, sampler.peaks, how, ok, error, cgroup.peak() if cgroup else None,
                   cgroup.oom_kills() if cgroup else 0, output)


@contextmanager
def _limited(machine: int | None, mechanism: str) -> Iterator[tuple[Cgroup | None, int | None, str]]:
    """(the cgroup to enter, the RLIMIT_AS to set, how the run is limited, in words)."""
    if mechanism not in ("auto", "cgroup", "rlimit", "both"):
        raise ValueError(f"mechanism must be auto, cgroup, rlimit or both, not {mechanism!r}")
    if machine is None:
        yield None, None, "none"
        return
    rlimit_text = f"address space {memory.gb(machine)} (RLIMIT_AS)"
    if mechanism == "rlimit":
        yield None, machine, rlimit_text
        return
    with memory_cgroup(machine) as cgroup:
        if cgroup is None and mechanism == "cgroup":
            raise RuntimeError("could not make a memory cgroup here (it needs root, or a delegated cgroup v2)")
        cgroup_text = f"cgroup v{cgroup.version} {memory.gb(machine)}" if cgroup else ""
        if mechanism == "both" or cgroup is None:
            yield cgroup, machine, " + ".join(filter(None, [cgroup_text, rlimit_text]))
        else:
            yield cgroup, None, cgroup_text


def main(argv: list[str] | None = None) -> int:
    """The runner: optionally enter a cgroup or lower RLIMIT_AS, then execute the notebook; print one JSON line."""
    import argparse
    import resource

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook")
    parser.add_argument("dbname")
    parser.add_argument("--cgroup", help="a memory cgroup directory to move into first")
    parser.add_argument("--address-space", type=int, help="RLIMIT_AS in bytes for this process and its children")
    args = parser.parse_args(argv)
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    if args.address_space:
        resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))

    from . import target as target_module
    from .notebooks import execute

    tgt = target_module.load(start=False, say=lambda *_: None)
    try:
        nb = execute(Path(args.notebook), tgt, args.dbname, timeout=300)
    except Exception as exc:  # a cell's error, or a kernel that died (killed for memory, say)
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-3000:]}"}))
        return 1
    texts = [output.get("text") or output.get("data", {}).get("text/markdown") or output.get("data", {}).get(
        "text/plain", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    print(json.dumps({"ok": True, "texts": texts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
