"""Lesson 06 runs on a 2 GB machine (Binder's limit): every cell runs with the kernel and its children held
to 2 GB, and the kernel, its children and the server together peak under 1.5 GB of PSS.

How the 2 GB are enforced. The notebook's runner, its kernel and every process the kernel starts run
under two limits at once:

- a memory cgroup of their own, limited to 2 GB (cgroup v1 `memory.limit_in_bytes` with the same
  `memsw` limit, or v2 `memory.max` with no swap), where this process may make one: as root, which CI
  here is, or in a delegated cgroup v2. This is the limit Binder's Kubernetes pod has: resident memory
  and page cache of the whole group, charged together, and the OOM killer for a group that outgrows it.
  The lesson reads this limit and sizes its largest demonstration from it exactly as it would on Binder.
- an address-space limit of 2 GB on each of those processes (RLIMIT_AS, what `prlimit --as` sets). An
  ordinary user cannot make a cgroup, and this limit needs no rights, so the test runs as an ordinary
  user too instead of being skipped. It is stricter than resident memory in one way: address space that
  is reserved but never touched counts (the kernel reserves about 1 GB with lesson 06's imports loaded
  while about 0.15 GB is resident, measured here with /proc/<pid>/status); and looser in another: it
  limits each process, not their sum. The lesson reads it as its limit all the same (`ulimit -v`).

What it does not limit: the PostgreSQL server, shared with everything else on this machine, stays
outside both. Its share is measured instead: PSS of the kernel, its children and the server's
processes for this notebook's database, sampled every 0.25 s as `make bench-memory` does, must peak
under 1.5 GB, which leaves a 2 GB session room for JupyterLab and the page cache. Together, the
enforced limit catches a cell that needs more than the machine has, and the measured budget catches a
run that fits only because the server was not counted.
"""

from __future__ import annotations

from pgcourse import footprint, target
from pgcourse.memory import gb

MACHINE = 2 * 2**30
BUDGET = int(1.5 * 2**30)
LESSON = "notebooks/06_cursors.ipynb"


def test_lesson_06_runs_in_2_gb_and_peaks_under_1_5_gb():
    run = footprint.run_notebook(LESSON, target.load(say=lambda *_: None), machine=MACHINE, mechanism="both",
                                 timeout=400)
    assert "RLIMIT_AS" in run.limit, run.limit
    assert run.ok, f"lesson 06 failed under {run.limit}: {run.error}"
    assert run.oom_kills == 0, f"the OOM killer struck {run.oom_kills} time(s) under {run.limit}"
    texts = "\n".join(run.output["texts"])
    assert f"gives the notebook {gb(MACHINE)}" in texts, "the lesson did not read the limit it ran under"
    assert "the largest run uses 300,000 rows" in texts and "At 300,000 rows the process grew" in texts
    peaks = run.peaks
    assert peaks.samples > 20 and peaks.kernel > 100 * 2**20, "the sampler saw nothing"
    assert peaks.total <= BUDGET, (f"peak PSS {gb(peaks.total)} (kernel and children {gb(peaks.kernel)}, server"
                                   f" {gb(peaks.server)}) is over {gb(BUDGET)} under {run.limit}")
