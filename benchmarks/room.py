"""A room of N learners on one server, every learner's kernels running at once (make bench-room).

The room is made with `pgcourse.room.create` (a role pair and a database per learner, each role at the
room's CONNECTION LIMIT), then each learner runs the chosen lessons one after the other, each in a new
kernel (nbclient), with the environment the room file hands out (DATABASE_URL, LIMITED_DATABASE_URL,
COURSE_LEARNER, COURSE_CONNECTION_LIMIT; the bundled psql on PATH). One learner runs them alone first:
the reference for per-notebook time and for telling a lesson that fails for a room learner anyway from a
failure the room caused. Then N learners start at once (and, with --also, smaller rooms first, for a
second point of the scaling). While they run, an admin session counts the client sessions in
pg_stat_activity every 50 ms (the server's total, and each learner's two roles), and the PSS of every
kernel and of the server is sampled every second; the CPU time of the kernels and of the server's
processes is read from the kernel's accounting of reaped children.

By default the room runs on a bundled server of its own (a new data directory in a temporary folder,
a free port, dropped at the end), so the course server is neither restarted (a room of 30 needs more
than its 100 connections) nor crowded; `--server course` uses the course's server (bundled or your
own, as .env says) and the room file `room create` uses. The room is dropped at the end, also after a
failure. Executed notebooks go to a temporary folder (printed), never over the lessons. The benchmark
prints figures and asserts nothing about speed; it exits 1 when any learner's run failed.

    .venv/bin/python benchmarks/room.py [--learners 30] [--also 10] [--notebooks 00_welcome,03a_connection_pooling]
        [--connection-limit L] [--server own|course] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402

from pgcourse import footprint, roomenv, target  # noqa: E402
from pgcourse import room as rooms  # noqa: E402
from pgcourse.bench import duration, ratio  # noqa: E402
from pgcourse.server import Cluster  # noqa: E402
from pgcourse.webservice import free_port  # noqa: E402

DEFAULT_NOTEBOOKS = "00_welcome,03a_connection_pooling,03b_connection_pooling,03c_connection_pooling"
POLL = 0.05  # seconds between pg_stat_activity samples
MEMORY_POLL = 1.0  # seconds between PSS samples
# Errors that say the server itself was full: another learner took the slot (never the learner's own limit).
SERVER_FULL = ("too many clients already", "remaining connection slots are reserved")
# Errors that say the learner's code reached another learner's session or object and was refused (the room
# keeps learners apart): when the learner alone passed that cell, another learner's run was in its way.
REFUSED = ("InsufficientPrivilege", "permission denied", "pg_signal_backend")


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---- the server and the room ---------------------------------------------------------------------------
@dataclass
class Place:
    """Where the room runs: the admin, the learners' host and port, the room file, the bundled cluster."""

    admin: object
    host: str
    port: int
    kind: str
    room_file: Path
    cluster: Cluster | None
    bindir: str | None
    own_dir: Path | None = None


@contextmanager
def own_server():
    """A bundled server of the benchmark's own (its template loaded as the course's), destroyed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pgcourse-room-server-"))
    folder.chmod(0o755)  # the service user (as root) keeps its data inside
    saved = {k: os.environ.pop(k) for k in ("PGCOURSE_STATE", "PGCOURSE_ENV", "PGCOURSE_PORT") if k in os.environ}
    cluster = Cluster(folder, env_path=folder / ".env", port=free_port(), say=lambda *_: None)
    os.environ.update(saved)
    try:
        started = time.perf_counter()
        say(f"Starting a bundled server of the benchmark's own (PostgreSQL {cluster.binaries.version}, port"
            f" {cluster.port}) ...")
        cluster.start()
        say(f"  ready in {duration(time.perf_counter() - started)}")
        yield Place(cluster.admin, "127.0.0.1", cluster.port, "bundled", folder / ".room" / "room.json", cluster,
                    str(cluster.binaries.bindir), folder)
    finally:
        cluster.destroy()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def course_server():
    from urllib.parse import urlsplit

    tgt = target.load(say=say)
    parts = urlsplit(tgt.database_url)
    bindir = str(tgt.cluster.binaries.bindir) if tgt.cluster else None
    yield Place(tgt.admin, parts.hostname, parts.port or 5432, tgt.kind, rooms.room_file(), tgt.cluster, bindir)


def learner_env(place: Place, learner: rooms.Learner) -> dict[str, str]:
    """The kernel's environment: this process's, without any course variable, plus what the room hands out."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "LIMITED_DATABASE_URL", "COURSE_SOCKET_DIR", "PGCOURSE_ENV",
                        "PGCOURSE_STATE", "PGCOURSE_PORT") and not k.startswith("COURSE_")}
    env.update(learner.env)
    if place.bindir:  # the bundled psql first on PATH, as `make lab` gives it (lesson 00 runs `!psql`)
        env["PATH"] = f"{place.bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


# ---- what the server and the machine do meanwhile ------------------------------------------------------
class ConnectionCounter(footprint.Poller):
    """Counts client sessions every POLL seconds: the server's total, and each learner's (role + limited)."""

    QUERY = ("SELECT coalesce(usename, ''), count(*) FROM pg_stat_activity"
             " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1")

    def __init__(self, admin, learners: dict[str, rooms.Learner]):
        self.conn = admin.connect()
        self.owner = {}
        for name, learner in learners.items():
            self.owner[learner.role] = (name, "role")
            self.owner[learner.limited_role] = (name, "limited")
        self.total = self.unknown = 0  # unknown: sessions with no role yet (authenticating) or no longer
        self.per_learner: dict[str, dict[str, int]] = {name: {"both": 0, "role": 0, "limited": 0} for name in learners}
        self.samples = 0
        super().__init__(POLL, "connection-counter")

    def sample(self) -> None:
        rows = self.conn.execute(self.QUERY).fetchall()
        self.total = max(self.total, sum(n for _, n in rows))
        self.unknown = max(self.unknown, sum(n for user, n in rows if not user))
        now: dict[str, dict[str, int]] = {}
        for user, n in rows:
            if user in self.owner:
                name, kind = self.owner[user]
                now.setdefault(name, {"role": 0, "limited": 0})[kind] += n
        for name, counts in now.items():
            peak = self.per_learner[name]
            peak["role"], peak["limited"] = max(peak["role"], counts["role"]), max(peak["limited"], counts["limited"])
            peak["both"] = max(peak["both"], counts["role"] + counts["limited"])
        self.samples += 1

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.conn.close()


def postmaster_pid(admin) -> int | None:
    with admin.connect() as conn:
        return footprint.parent_of(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def cpu_seconds(pid: int | None) -> float:
    """A process's CPU time with that of its reaped children (utime, stime, cutime, cstime), 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class MemorySampler(footprint.Poller):
    """Peak PSS (summed at one instant) of this process's kernels, and of the server's processes."""

    def __init__(self, postmaster: int | None):
        self.postmaster = postmaster
        self.kernels = self.server = 0
        super().__init__(MEMORY_POLL, "pss-sampler")

    def sample(self) -> None:
        server = ({self.postmaster} | footprint.descendants(self.postmaster)) if self.postmaster else set()
        kernels = footprint.descendants(os.getpid()) - server
        self.kernels = max(self.kernels, sum(footprint.pss_bytes(pid) for pid in kernels))
        self.server = max(self.server, sum(footprint.pss_bytes(pid) for pid in server))



# ---- running the notebooks -----------------------------------------------------------------------------
@dataclass
class NotebookRun:
    learner: str
    notebook: str
    seconds: float
    errors: list[str] = field(default_factory=list)  # "code cell N: Name: message", or how the run broke off
    raised: dict[str, str | None] = field(default_factory=dict)  # cells meant to raise: "code cell N" -> what they did

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str:
        return "; ".join(self.errors)


@dataclass
class Phase:
    """One run of n learners at once."""

    n: int
    runs: list[NotebookRun] = field(default_factory=list)
    wall: float = 0.0
    peak_total: int = 0
    peak_unknown: int = 0
    peak_learner: dict[str, dict[str, int]] = field(default_factory=dict)
    kernels_pss: int = 0
    server_pss: int = 0
    kernels_cpu: float = 0.0
    harness_cpu: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load average at the start and at the end
    server_cpu: float = 0.0


def cell_errors(nb) -> list[str]:
    """Every cell that raised and was not meant to (no raises-exception tag): its number among the code
    cells and the error's last line. Every cell runs (allow_errors), so a room's failures are compared
    cell by cell with the same learner's alone."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return [f"code cell {number}: {output.get('ename')}: {last_line(output.get('evalue', ''))}"
            for number, cell in enumerate(code, 1) if "raises-exception" not in cell.metadata.get("tags", [])
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]


def cells_meant_to_raise(nb) -> dict[str, str | None]:
    """What each cell tagged raises-exception raised (its exception's name), None where it raised nothing."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return {f"code cell {number}": next((o.get("ename") for o in cell.get("outputs", [])
                                         if o.get("output_type") == "error"), None)
            for number, cell in enumerate(code, 1) if "raises-exception" in cell.metadata.get("tags", [])}


def compare_raised(alone: Phase, phases: list[Phase]) -> None:
    """A cell meant to raise that, in a room, raised something else than alone (or nothing) failed its
    lesson too (the failure the learner was to see did not happen): it is added to the run's errors."""
    expected = {r.notebook: r.raised for r in alone.runs}
    for p in phases:
        for r in p.runs:
            for cell, got in r.raised.items():
                want = expected.get(r.notebook, {}).get(cell, got)
                if got != want:
                    r.errors.append(f"{cell}: {got or 'NoError'}: a cell meant to raise {want or 'nothing'} (as it"
                                    f" did alone) raised {got or 'nothing'}")


def last_line(text: str) -> str:
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip().splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("DETAIL:", "HINT:", "CONTEXT:"))] or lines
    return (said[-1] if said else "").strip()[:300]


def notebook_text(source: Path, revision: str | None) -> str:
    """The notebook as in the checkout, or as committed at `revision` (lessons being edited stay out)."""
    if revision is None:
        return source.read_text()
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{source.relative_to(ROOT)}"],
                          capture_output=True, text=True, check=True).stdout


async def run_notebook(source: Path, text: str, name: str, env: dict, out: Path, timeout: float) -> NotebookRun:
    from nbclient import NotebookClient

    nb = nbformat.reads(text, as_version=4)
    client = NotebookClient(nb, timeout=timeout, startup_timeout=timeout, record_timing=False, allow_errors=True,
                            store_widget_state=False, resources={"metadata": {"path": str(ROOT / "notebooks")}})
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    broke_off = []
    with open(out / f"{source.stem}.kernel.log", "w") as log:
        try:
            await asyncio.wait_for(client.async_execute(env=env, stderr=log), timeout * 2)
        except Exception as exc:  # a timeout, a kernel that died
            broke_off = [f"run broke off: {type(exc).__name__}: {last_line(exc) or 'no message'}"]
    seconds = time.perf_counter() - started
    nbformat.write(nb, out / source.name)
    return NotebookRun(name, source.stem, seconds, cell_errors(nb) + broke_off, cells_meant_to_raise(nb))


async def run_learner(name: str, sources: dict[Path, str], env: dict, out: Path, timeout: float, done: list,
                      total: int) -> list[NotebookRun]:
    runs = []
    for source, text in sources.items():
        run = await run_notebook(source, text, name, env, out / name, timeout)
        runs.append(run)
        done.append(run)
        verdict = "ok" if run.ok else f"FAILED ({run.error})"
        say(f"  [{len(done):>3}/{total}] {name} {run.notebook}: {verdict} in {duration(run.seconds)}")
    return runs


def run_phase(place: Place, room: rooms.Room, names: list[str], sources: dict[Path, str], out: Path,
              timeout: float) -> Phase:
    """Reset the learners' databases, then run every learner's notebooks at once; measure meanwhile."""
    for name in names:
        rooms.reset(place.admin, room, name)
    phase = Phase(len(names))
    postmaster = postmaster_pid(place.admin)
    say(f"{len(names)} learner(s) at once: {len(names) * len(sources)} notebook runs ...")
    done: list[NotebookRun] = []
    cpu_before = (resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(postmaster),
                  resource.getrusage(resource.RUSAGE_SELF))
    with ConnectionCounter(place.admin, {n: room.learners[n] for n in names}) as counter, \
            MemorySampler(postmaster) as memory:
        started, load_before = time.perf_counter(), os.getloadavg()[0]

        async def everyone():
            return await asyncio.gather(*(
                run_learner(n, sources, learner_env(place, room.learners[n]), out, timeout, done,
                            len(names) * len(sources)) for n in names))

        results = asyncio.run(everyone())
        phase.wall, phase.load = time.perf_counter() - started, (load_before, os.getloadavg()[0])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    phase.kernels_cpu = (after.ru_utime + after.ru_stime) - (cpu_before[0].ru_utime + cpu_before[0].ru_stime)
    phase.server_cpu = cpu_seconds(postmaster) - cpu_before[1] if postmaster else 0.0
    me = resource.getrusage(resource.RUSAGE_SELF)
    phase.harness_cpu = (me.ru_utime + me.ru_stime) - (cpu_before[2].ru_utime + cpu_before[2].ru_stime)
    phase.runs = [run for runs in results for run in runs]
    phase.peak_total, phase.peak_unknown, phase.peak_learner = counter.total, counter.unknown, counter.per_learner
    phase.kernels_pss, phase.server_pss = memory.kernels, memory.server
    return phase


# ---- the report ----------------------------------------------------------------------------------------
def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def report(alone: Phase, phases: list[Phase], notebooks: list[str], room: rooms.Room, server: str) -> list[str]:
    """The figures as Markdown lines (also what is printed)."""
    lines = [f"Server: {server}; the room needs {room.max_connections}: CONNECTION LIMIT {room.connection_limit}"
             f" per learner role, {roomenv.LIMITED_PER_LEARNER} per limited role. Machine: {os.cpu_count()} CPU(s).",
             f"Each learner ran, one after the other, each in a new kernel: {', '.join(notebooks)}.", ""]
    lines += ["| learners | wall time | runs with a failed cell | peak sessions on the server (no role yet)"
              " | peak sessions per learner, max / median | CPU: kernels, server, harness | CPU per learner"
              " | peak PSS: kernels, server | load average, start / end |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in [alone, *phases]:
        both = [v["both"] for v in p.peak_learner.values()] or [0]
        failed = sum(not r.ok for r in p.runs)
        lines.append(f"| {p.n}{' (alone)' if p is alone else ''} | {duration(p.wall)} | {failed} of {len(p.runs)}"
                     f" | {p.peak_total} ({p.peak_unknown}) | {max(both)} / {statistics.median(both):g}"
                     f" | {duration(p.kernels_cpu)}, {duration(p.server_cpu)}, {duration(p.harness_cpu)}"
                     f" | {duration((p.kernels_cpu + p.server_cpu) / p.n)} | {mb(p.kernels_pss)}, {mb(p.server_pss)}"
                     f" | {p.load[0]:.1f} / {p.load[1]:.1f} |")
    cores = os.cpu_count() or 1
    lines += ["", "How it scales: the room's CPU (kernels and server) spread over every core is the least wall time"
              " a room can take; the rest is waiting (sleeps, round trips, the machine's other load)."]
    for p in phases:
        floor = (p.kernels_cpu + p.server_cpu) / cores
        lines.append(f"- {p.n} learners: wall {duration(p.wall)}, {ratio(p.wall / alone.wall)} the alone run's"
                     f" {duration(alone.wall)}; their CPU over {cores} core(s) needs at least {duration(floor)}"
                     f" ({p.n} x {duration((p.kernels_cpu + p.server_cpu) / p.n)} / {cores}).")
    lines += ["", "Per notebook: time alone, and in each room (median and slowest learner; slowdown of the median):",
              "", "| notebook | alone | " + " | ".join(f"{p.n} learners" for p in phases) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in phases) + " |"]
    for notebook in notebooks:
        base = next(r.seconds for r in alone.runs if r.notebook == notebook)
        cells = []
        for p in phases:
            times = sorted(r.seconds for r in p.runs if r.notebook == notebook)
            median = statistics.median(times)
            cells.append(f"{duration(median)} / {duration(times[-1])} ({ratio(median / base)})")
        lines.append(f"| {notebook} | {duration(base)} | " + " | ".join(cells) + " |")
    failures = failure_lines(alone, phases)
    return [failures[0], "", *lines, "", *failures[1:]]


def cell_key(error: str) -> str:
    """'code cell 5: AssertionError: it saved 1.71' -> 'code cell 5: AssertionError' (the cell and the kind)."""
    return ":".join(error.split(":")[:2])


def cell_order(key: str) -> tuple[int, str]:
    number = re.match(r"code cell ([0-9]+)", key)
    return (int(number.group(1)) if number else 10**6, key)


def failure_lines(alone: Phase, phases: list[Phase]) -> list[str]:
    """Failed cells, per phase, notebook and cell, each with its cause: the lesson's own (the learner alone
    failed it too), another learner's (a full server; a refusal to touch another learner's session; a cell
    the learner alone passed, e.g. a timing check under the room's load), or an earlier failed cell's (a
    NameError after it). The first line is the headline: failures caused by other learners."""
    same_alone = {(r.notebook, cell_key(e)) for r in alone.runs for e in r.errors}
    lines = [f"- alone, {r.notebook}, {e} (the lesson fails for a room learner: not caused by others)"
             for r in alone.runs for e in r.errors]
    caused, runs_hit, runs = 0, 0, 0
    for p in phases:
        seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for r in p.runs:
            runs += 1
            hit = False
            for number, e in enumerate(r.errors):
                cascade = cell_key(e).endswith("NameError") and number > 0
                seen.setdefault((r.notebook, cell_key(e)), []).append((r.learner, e))
                hit = hit or (not cascade and (r.notebook, cell_key(e)) not in same_alone)
            runs_hit += hit
        for (notebook, key), found in sorted(seen.items(), key=lambda item: (item[0][0], cell_order(item[0][1]))):
            example = found[0][1]
            learners = [learner for learner, _ in found]
            if key.endswith("NameError") and all(
                    next(r for r in p.runs if r.learner == learner and r.notebook == notebook).errors.index(e) > 0
                    for learner, e in found):
                cause = "follows from an earlier failed cell of the same run"
            elif any(text in example for text in SERVER_FULL):
                cause, caused = "CAUSED BY OTHER LEARNERS: the server was full", caused + 1
            elif (notebook, key) in same_alone:
                cause = "fails alone too: the lesson's, not the room's"
            elif any(text in example for text in REFUSED):
                cause, caused = ("CAUSED BY OTHER LEARNERS: it reached another learner's session, which the room"
                                 " refused (the learner alone passed it)"), caused + 1
            else:
                cause, caused = ("CAUSED BY OTHER LEARNERS: only in the room, the learner alone passed it (their"
                                 " load)"), caused + 1
            names = ", ".join(learners[:5]) + (", ..." if len(learners) > 5 else "")
            lines.append(f"- {p.n} learners, {notebook}, {key}: {len(learners)} of {p.n} learners ({names}): {cause}."
                         f" First: {example.split(': ', 2)[-1]}")
    head = (f"Failures caused by other learners: {caused} failed cell(s), in {runs_hit} of {runs} notebook runs"
            " in rooms (a full server, a refusal to touch another learner's session, or a cell the learner alone"
            " passed); listed below." if caused else
            "Failures caused by other learners: none (no full server, no refusal, no cell failed that passed alone).")
    return [head, *(["Failed cells:", *lines] if lines else ["No cell failed."])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=30, help="the room's size (default 30)")
    parser.add_argument("--also", default="", help="smaller rooms to run first, e.g. 10 (comma-separated)")
    parser.add_argument("--notebooks", default=DEFAULT_NOTEBOOKS,
                        help=f"the lessons each learner runs, in order (default {DEFAULT_NOTEBOOKS})")
    parser.add_argument("--connection-limit", type=int, help="each learner role's CONNECTION LIMIT"
                        f" (default roomenv.PER_LEARNER, {roomenv.PER_LEARNER})")
    parser.add_argument("--server", choices=["own", "course"], default="own",
                        help="own: a bundled server of the benchmark's own (default); course: the course's server")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds a cell (and a kernel's start) may take")
    parser.add_argument("--revision", help="run the lessons as committed at this revision (e.g. HEAD), not the checkout's")
    parser.add_argument("--out", type=Path, help="where the executed notebooks go (default: a new temporary folder)")
    parser.add_argument("--markdown", type=Path, help="also write the figures to this Markdown file")
    args = parser.parse_args(argv)
    notebooks = [n.strip().removesuffix(".ipynb") for n in args.notebooks.split(",") if n.strip()]
    paths = [ROOT / "notebooks" / f"{n}.ipynb" for n in notebooks]
    missing = [str(s) for s in paths if not s.exists()]
    sizes = sorted({int(n) for n in args.also.split(",") if n.strip()} | {args.learners})
    if missing or sizes[0] < 1:
        parser.error(f"no such notebook: {', '.join(missing)}" if missing else "a room has at least 1 learner")
    sources = {path: notebook_text(path, args.revision) for path in paths}
    out = args.out or Path(tempfile.mkdtemp(prefix="pgcourse-room-"))
    say(f"Executed notebooks go to {out}")
    names = [f"bench{i:02d}" for i in range(1, sizes[-1] + 1)]

    with (own_server() if args.server == "own" else course_server()) as place:
        started = time.perf_counter()
        room = rooms.create(place.admin, names, host=place.host, port=place.port, kind=place.kind,
                            connection_limit=args.connection_limit, say=say, path=place.room_file,
                            cluster=place.cluster)
        say(f"  room of {len(names)} made in {duration(time.perf_counter() - started)}")
        try:
            with place.admin.connect() as conn:
                version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
                allowed = int(conn.execute("SELECT current_setting('max_connections')").fetchone()[0])
            server = (f"{'a bundled server of its own' if args.server == 'own' else place.kind + ' course server'},"
                      f" PostgreSQL {version} (allows {allowed} connections)")
            alone = run_phase(place, room, names[:1], sources, out / "alone", args.timeout)
            phases = [run_phase(place, room, names[:n], sources, out / f"room{n}", args.timeout) for n in sizes]
        finally:  # also after a failure: every learner of the benchmark, and nobody else in that room file
            if place.room_file.exists():
                left = rooms.Room.load(place.room_file)
                rooms.drop(place.admin, left, [n for n in names if n in left.learners], path=place.room_file, say=say)
    compare_raised(alone, phases)
    lines = report(alone, phases, notebooks, room, server)
    (out / "results.json").write_text(json.dumps({"server": server, "notebooks": notebooks,
                                                  "phases": [asdict(p) for p in [alone, *phases]]}, indent=1))
    print("\n".join(lines))
    if args.markdown:
        ran = " ".join(["benchmarks/room.py", *(argv if argv is not None else sys.argv[1:])])
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.markdown.write_text("\n".join([f"`{ran}`, finished {when}", "", *lines]) + "\n")
    say(f"Executed notebooks are in {out}")
    return 1 if any(not r.ok for p in [alone, *phases] for r in p.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
