"""How much memory this machine gives a notebook, so that a lesson can size its largest demonstration.

A container or Binder session is limited by its cgroup (whatever /proc/meminfo says about the host),
`ulimit -v` limits each process's address space, and a laptop has its physical memory: the smallest
of the three is the limit. MemAvailable says what is free now.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# A demonstration may take a quarter of the machine's limit. Only the limit decides, never what happens
# to be free at the moment: the same machine always runs the same size, so its outputs stay comparable.
DEMO_SHARE_OF_LIMIT = 0.25


@dataclass(frozen=True)
class Machine:
    """The memory limit that applies to this process (bytes, and where it comes from) and what is available now."""

    limit: int
    source: str
    available: int


def gb(n_bytes: float) -> str:
    """2.0 GB (GiB, written as people say it)."""
    return f"{n_bytes / 2**30:.1f} GB"


def _meminfo(root: Path) -> dict[str, int]:
    values = {}
    for line in (root / "proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0]) * 1024
    return values


def _cgroup_dirs(root: Path) -> list[tuple[int, Path]]:
    """This process's memory cgroup and its ancestors as (version, directory), from /proc/self/cgroup."""
    mounts = []  # (version, the cgroup path the mount shows, mount point)
    for line in (root / "proc/self/mountinfo").read_text().splitlines():
        fields, _, fs = line.partition(" - ")
        fields, fs = fields.split(), fs.split()
        if fs[0] == "cgroup2" or (fs[0] == "cgroup" and "memory" in fs[-1].split(",")):
            mounts.append((2 if fs[0] == "cgroup2" else 1, Path(fields[3]), root / fields[4].lstrip("/")))
    found = []
    for line in (root / "proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        version = 2 if controllers == "" else 1 if "memory" in controllers.split(",") else 0
        for mount_version, shown, top in mounts:
            if version == mount_version and Path(path).is_relative_to(shown):
                directory = top / Path(path).relative_to(shown)
                found += [(version, d) for d in [directory, *directory.parents] if d.is_relative_to(top)]
    return found


def _cgroup_figures(root: Path) -> tuple[int, int] | None:
    """(limit, bytes in use apart from file cache) of the cgroup, this one or an ancestor, with the smallest limit."""
    best = None
    for version, directory in _cgroup_dirs(root):
        names = ("memory.max", "memory.current", "file") if version == 2 else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache")
        try:
            text = (directory / names[0]).read_text().strip()
            if not text.isdigit() or int(text) >= 2**60:  # "max", or v1's "unlimited", a number near 2**63
                continue
            stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
            used = int((directory / names[1]).read_text()) - int(stat.get(names[2], 0))
        except (OSError, ValueError):
            continue
        if best is None or int(text) < best[0]:
            best = (int(text), max(used, 0))
    return best


def machine(root: Path = Path("/")) -> Machine:
    """The limit that applies here: a cgroup's, the address-space limit (ulimit -v), or physical memory."""
    info = _meminfo(root)
    candidates = [(info["MemTotal"], "physical memory")]
    available = info.get("MemAvailable", info["MemTotal"])
    if (cgroup := _cgroup_figures(root)) is not None:
        candidates.append((cgroup[0], "a cgroup memory limit"))
        available = min(available, cgroup[0] - cgroup[1])
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:
        candidates.append((address_space, "an address-space limit, ulimit -v"))
    limit, source = min(candidates)
    return Machine(limit, source, max(min(available, limit), 0))


@dataclass(frozen=True, repr=False)
class Plan:
    """The largest size that fits, and the sentence that says why (a notebook shows the sentence)."""

    rows: int
    sentence: str

    def _repr_markdown_(self) -> str:
        return self.sentence

    def __repr__(self) -> str:
        return self.sentence


def largest_that_fits(sizes: Sequence[int], bytes_per_row: float, *, here: Machine | None = None) -> Plan:
    """The largest of `sizes` (rows) whose estimated memory fits this machine; the smallest if none does.

    A size fits when it needs at most a quarter of the machine's limit (2 GB gives 512 MB; 8 GB, 2 GB).
    """
    here = here or machine()
    budget = here.limit * DEMO_SHARE_OF_LIMIT
    ordered = sorted(sizes)
    fitting = [n for n in ordered if n * bytes_per_row <= budget]
    rows = fitting[-1] if fitting else ordered[0]
    largest = ordered[-1]
    need = f"{largest:,} rows would need about {largest * bytes_per_row / 2**20:,.0f} MB"
    where = f"This machine gives the notebook {gb(here.limit)} ({here.source})"
    if rows == largest:
        verdict = f"{need}, which fits: the largest run uses {rows:,} rows."
    elif fitting:
        verdict = (f"{need}, more than a demonstration should take (a quarter of that):"
                   f" the largest run uses {rows:,} rows.")
    else:
        verdict = f"{need}; even {rows:,} rows need more than a demonstration should take, but the largest run uses them."
    return Plan(rows, f"{where}. {verdict}")
