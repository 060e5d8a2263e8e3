"""Peak memory of each lesson's Run-All: PSS of the kernel with its children, and of the server (make bench-memory).

Each notebook runs top to bottom against a fresh clone of the course database (the file is not
written back) while its memory is sampled every 0.25 s. By default the kernel runs as on a 2 GB
machine (Binder's limit): in a memory cgroup where this process may make one, else under an
address-space limit, so lessons size their demonstrations as they would there; `--machine host`
runs it on this machine as it is. One row per notebook; the exit code is 1 when a peak exceeds the
limit (1.5 GB: a 2 GB session keeps the rest for JupyterLab and the page cache) or a cell failed.

    .venv/bin/python benchmarks/memory.py [--machine 2G|host] [--limit 1.5G] [notebooks/06_cursors.ipynb ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgcourse import footprint, target  # noqa: E402


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GB"


def size(text: str) -> int:
    """2G, 1.5G, 512M -> bytes (binary units)."""
    units = {"G": 2**30, "M": 2**20}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--machine", default="2G", help="the machine to run as: a size (default 2G) or 'host'")
    parser.add_argument("--mechanism", default="auto", choices=["auto", "cgroup", "rlimit", "both"],
                        help="how to limit the kernel to that size (auto: a cgroup if allowed, else RLIMIT_AS; both: the two at once)")
    parser.add_argument("--limit", default="1.5G", help="the peak total PSS allowed per notebook (default 1.5G)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    machine = None if args.machine == "host" else size(args.machine)
    limit = size(args.limit)

    tgt = target.load(say=lambda *_: None)
    print(f"PSS sampled every {footprint.INTERVAL} s: kernel + its children, server (postmaster, its background"
          f" processes and the notebook's backends); limit {gb(limit)} per notebook", flush=True)
    header = f"{'notebook':<28} {'total':>9} {'kernel+ch.':>10} {'server':>9} {'limit':>7}  machine"
    print(header, "-" * len(header), sep="\n", flush=True)
    failed = []
    for path in notebooks:
        run = footprint.run_notebook(path, tgt, machine=machine, mechanism=args.mechanism)
        peaks = run.peaks
        server = gb(peaks.server) if peaks.server_seen else "n/a"
        verdict = "" if run.ok and peaks.total <= limit else "  OVER THE LIMIT" if run.ok else "  FAILED"
        print(f"{run.notebook:<28} {gb(peaks.total):>9} {gb(peaks.kernel):>10} {server:>9} {gb(limit):>7}  "
              f"{run.limit if machine else 'this one, unlimited'}{verdict}", flush=True)
        if not run.ok:
            print("    " + re.sub(r"\x1b\[[0-9;]*m", "", run.error).strip().splitlines()[-1][:300] + (
                f" (the cgroup's OOM killer struck {run.oom_kills} time(s))" if run.oom_kills else ""), flush=True)
        if verdict:
            failed.append(run.notebook)
    if failed:
        print(f"\n{len(failed)} notebook(s) over the limit or failing: {', '.join(failed)}")
        return 1
    print(f"\nEvery notebook peaked under {gb(limit)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
