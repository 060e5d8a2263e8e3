"""Peak connections each lesson holds at once on the server, as the learner and as the limited role (a room's sizing).

Each notebook runs top to bottom in a new kernel (nbclient, in a child process; the file is not
written back) against a fresh clone of the course database, while an admin connection polls
`pg_stat_activity` every 20 ms. It counts the client sessions of that run only: every session in its
clone database (by role: the learner, the limited role, any other such as a lesson's demo roles), plus
the learner's and the limited role's sessions in other databases (the progress board's, say) whose
client port belongs to the run's own processes. A role's CONNECTION LIMIT counts its sessions in every
database, so a role's peak is its sessions in the clone and elsewhere at the same instant. Other
notebooks running on the same server, in their own databases, are not counted.

One row per notebook; the table also goes to docs/connections.json (the instructor's guide and
`pgcourse.roomenv.PER_LEARNER` read it). At most two notebooks run at once (--jobs).

    .venv/bin/python benchmarks/connections.py [--jobs 2] [--json docs/connections.json] [--update] [notebooks/03a_connection_pooling.ipynb ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from pgcourse import target  # noqa: E402

INTERVAL = 0.020  # seconds between polls of pg_stat_activity
QUERY = """
SELECT pid, datname, usename, client_port
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND (datname = %s OR usename = ANY(%s))
"""


@dataclass
class Peaks:
    notebook: str
    learner: int = 0  # the learner role's sessions of this run at once, in any database
    limited: int = 0  # the limited role's, in any database
    others: int = 0  # other roles' sessions in the clone (a lesson's demo roles)
    total: int = 0  # every session of this run at once
    elsewhere: int = 0  # the learner's and limited role's sessions of this run outside the clone, at once
    seconds: float = 0.0
    polls: int = 0
    ok: bool = True
    error: str = ""
    elsewhere_databases: list = field(default_factory=list)  # where those sessions were
    unattributed: list = field(default_factory=list)  # socket sessions of the roles elsewhere (no port)


def tree_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the TCP connections to the server of a process and all its descendants (the kernel, the
    services it started)."""
    import psutil

    ports: set[int] = set()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return ports
    for proc in procs:
        try:
            ports.update(c.laddr.port for c in proc.net_connections(kind="tcp")
                         if c.laddr and c.raddr and c.raddr.port == server_port)
        except psutil.Error:
            continue
    return ports


def measure(path: Path, tgt: target.Target, timeout: float) -> Peaks:
    from pgcourse.notebooks import fresh_database

    roles = [conninfo_to_dict(tgt.database_url)["user"], conninfo_to_dict(tgt.limited_url)["user"]]
    server_port = int(conninfo_to_dict(tgt.database_url).get("port") or 5432)
    peaks = Peaks(str(path.relative_to(ROOT)) if path.is_absolute() else str(path))
    with fresh_database(tgt, f"conn_{path.stem}") as dbname, tgt.admin.connect() as admin:
        started = time.perf_counter()
        runner = subprocess.Popen([sys.executable, __file__, "--run", str(path), dbname],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: dict = {}
        reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), runner.communicate(), strict=True)))
        reader.start()
        ours: dict[int, bool] = {}  # backend pid elsewhere -> whether its client is this run's process
        deadline = started + timeout
        while runner.poll() is None and time.perf_counter() < deadline:
            rows = admin.execute(QUERY, (dbname, roles)).fetchall()
            elsewhere = [r for r in rows if r[1] != dbname]
            unknown = [r for r in elsewhere if r[0] not in ours and r[3] is not None and r[3] > 0]
            if unknown:
                ports = tree_ports(runner.pid, server_port)
                for pid, _, _, port in unknown:
                    ours[pid] = port in ports
            mine = [r for r in rows if r[1] == dbname or ours.get(r[0])]
            for r in elsewhere:
                if ours.get(r[0]) and r[1] not in peaks.elsewhere_databases:
                    peaks.elsewhere_databases.append(r[1])
                if (r[3] is None or r[3] <= 0) and r[0] not in peaks.unattributed:
                    peaks.unattributed.append(r[0])
            peaks.learner = max(peaks.learner, sum(r[2] == roles[0] for r in mine))
            peaks.limited = max(peaks.limited, sum(r[2] == roles[1] for r in mine))
            peaks.others = max(peaks.others, sum(r[2] not in roles for r in mine))
            peaks.total = max(peaks.total, len(mine))
            peaks.elsewhere = max(peaks.elsewhere, sum(r[1] != dbname for r in mine))
            peaks.polls += 1
            time.sleep(INTERVAL)
        if runner.poll() is None:
            runner.kill()
            peaks.ok, peaks.error = False, f"the run took longer than {timeout:.0f} s"
        reader.join()
        peaks.seconds = round(time.perf_counter() - started, 1)
        lines = (out.get("stdout") or "").strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        if peaks.ok and not result.get("ok"):
            peaks.ok = False
            peaks.error = result.get("error") or (out.get("stderr") or "").strip()[-500:] or "no result"
    return peaks


def run_one(notebook: str, dbname: str) -> int:
    """The child process: execute the notebook against `dbname` (nothing written); print one JSON line."""
    from pgcourse.notebooks import execute

    tgt = target.load(start=False, say=lambda *_: None)
    try:
        execute(Path(notebook), tgt, dbname, timeout=300)
    except Exception as exc:  # a cell's error, or a kernel that died
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}))
        return 1
    print(json.dumps({"ok": True}))
    return 0


def row(p: Peaks) -> str:
    verdict = "" if p.ok else "  FAILED: " + p.error.strip().splitlines()[-1][:200] if p.error.strip() else "  FAILED"
    return (f"{Path(p.notebook).name:<40} {p.learner:>7} {p.limited:>7} {p.others:>6} {p.total:>5} "
            f"{p.elsewhere:>9} {p.seconds:>7.1f}{verdict}")


def write_table(path: Path, results: list[Peaks], kept: list[dict]) -> None:
    """The table as JSON; with `kept` (--update), these notebooks' rows replace theirs and the others stay."""
    rows = [{k: v for k, v in asdict(p).items() if k not in ("polls",)} for p in results]
    if kept:
        fresh = {row["notebook"]: row for row in rows}
        rows = [fresh.pop(row["notebook"], row) for row in kept] + list(fresh.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "about": "Peak sessions each notebook holds at once on the server (benchmarks/connections.py):"
                 " learner and limited = that role's sessions in any database; others = other roles'"
                 " sessions in the notebook's database; total = all of them; seconds = the run's wall time.",
        "interval_ms": round(INTERVAL * 1000),
        "notebooks": rows,
    }, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="default: notebooks/*.ipynb and solutions/*.ipynb")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2, at most 2)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "connections.json",
                        help="where to write the table (default docs/connections.json; '-' for none)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--update", action="store_true",
                        help="replace only these notebooks' rows in the JSON table, keeping the others")
    parser.add_argument("--run", nargs=2, metavar=("NOTEBOOK", "DBNAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return run_one(*args.run)
    notebooks = [p.resolve() for p in args.notebooks] or (
        sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb")))
    tgt = target.load(say=lambda *_: None)
    header = f"{'notebook':<40} {'learner':>7} {'limited':>7} {'others':>6} {'total':>5} {'elsewhere':>9} {'seconds':>7}"
    print(f"Peak sessions at once, pg_stat_activity polled every {INTERVAL * 1000:.0f} ms", header,
          "-" * len(header), sep="\n", flush=True)
    results: list[Peaks] = []
    kept = json.loads(args.json.read_text())["notebooks"] if args.update and args.json.exists() else []
    with ThreadPoolExecutor(max_workers=max(1, min(2, args.jobs))) as pool:
        for peaks in pool.map(lambda p: measure(p, tgt, args.timeout), notebooks):
            print(row(peaks), flush=True)
            results.append(peaks)
            if str(args.json) != "-":  # after every notebook: a run cut short keeps what it measured
                write_table(args.json, results, kept)
    failed = [p.notebook for p in results if not p.ok]
    print(f"\nThe largest peak as the learner: {max(p.learner for p in results)} "
          f"({', '.join(Path(p.notebook).name for p in results if p.learner == max(q.learner for q in results))});"
          f" as the limited role: {max(p.limited for p in results)}.")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
