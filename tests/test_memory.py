"""pgcourse.memory: the limit a notebook runs under (cgroup v1/v2, ulimit -v, physical memory), and the
size a lesson picks from it; pgcourse.footprint's process and PSS readings."""

from __future__ import annotations

import os
import pwd
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgcourse import footprint, memory

GiB = 2**30
ROOT = Path(__file__).resolve().parents[1]


def fake_root(tmp_path: Path, *, total_kb: int, available_kb: int, cgroup: str, mountinfo: list[str],
              files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {total_kb} kB\nMemFree: 1 kB\nMemAvailable: {available_kb} kB\n")
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text("\n".join(mountinfo) + "\n")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_cgroup_v2_limit_wins_over_the_hosts_memory_like_on_binder(tmp_path):
    root = fake_root(
        tmp_path, total_kb=64 * 2**20, available_kb=60 * 2**20, cgroup="0::/kubepods/pod1/jupyter\n",
        mountinfo=["30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw"],
        files={"sys/fs/cgroup/kubepods/pod1/jupyter/memory.max": "max\n",
               "sys/fs/cgroup/kubepods/pod1/memory.max": f"{2 * GiB}\n",
               "sys/fs/cgroup/kubepods/pod1/memory.current": f"{GiB}\n",
               "sys/fs/cgroup/kubepods/pod1/memory.stat": f"anon 1\nfile {GiB // 2}\n"})
    here = memory.machine(root)
    assert (here.limit, here.source) == (2 * GiB, "a cgroup memory limit")
    assert here.available == 2 * GiB - GiB // 2  # the page cache counts as free: the kernel reclaims it


def test_a_cgroup_v1_limit_inside_a_container_is_read_relative_to_its_mount(tmp_path):
    root = fake_root(
        tmp_path, total_kb=16 * 2**20, available_kb=12 * 2**20, cgroup="4:memory:/docker/abc\n1:cpu:/docker/abc\n",
        mountinfo=["35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"],
        files={"sys/fs/cgroup/memory/memory.limit_in_bytes": f"{3 * GiB}\n",
               "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{GiB}\n",
               "sys/fs/cgroup/memory/memory.stat": "cache 0\ntotal_cache 0\n"})
    here = memory.machine(root)
    assert (here.limit, here.source, here.available) == (3 * GiB, "a cgroup memory limit", 2 * GiB)


def test_without_limits_the_physical_memory_and_memavailable_count(tmp_path):
    root = fake_root(
        tmp_path, total_kb=8 * 2**20, available_kb=5 * 2**20, cgroup="4:memory:/\n",
        mountinfo=["35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"],
        files={"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
               "sys/fs/cgroup/memory/memory.usage_in_bytes": "1\n", "sys/fs/cgroup/memory/memory.stat": "\n"})
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        pytest.skip("this process runs under ulimit -v")
    assert memory.machine(root) == memory.Machine(8 * GiB, "physical memory", 5 * GiB)


def test_an_address_space_limit_is_read_from_the_process():
    limit = 3 * GiB
    code = "from pgcourse import memory; m = memory.machine(); print(m.limit, m.source)"
    out = subprocess.run(["prlimit", f"--as={limit}", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=1)
    assert int(out[0]) <= limit and (int(out[0]) < limit or "ulimit -v" in out[1])


@pytest.mark.parametrize(("limit", "available", "rows", "says"), [
    (24 * GiB, 20 * GiB, 1_000_000, "which fits: the largest run uses 1,000,000 rows"),
    (2 * GiB, 2 * GiB, 300_000, "more than a demonstration should take"),  # Binder
    (8 * GiB, GiB // 4, 1_000_000, "which fits"),  # a busy laptop: what is free now does not change the size
    (3 * GiB, 3 * GiB, 300_000, "more than a demonstration should take"),
    (GiB // 2, GiB // 2, 300_000, "even 300,000 rows need more"),
])
def test_the_largest_size_that_fits_takes_a_quarter_of_the_limit(limit, available, rows, says):
    plan = memory.largest_that_fits([1_000_000, 300_000], 1000, here=memory.Machine(limit, "a test", available))
    assert plan.rows == rows
    assert says in plan.sentence and memory.gb(limit) in plan.sentence and "(a test)" in plan.sentence
    assert plan._repr_markdown_() == repr(plan) == plan.sentence


def test_descendants_and_pss_of_a_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '5'])"])
    try:
        for _ in range(100):  # until the child has started its own child
            if footprint.descendants(child.pid):
                break
            time.sleep(0.05)
        below = footprint.descendants(os.getpid())
        assert child.pid in below and footprint.descendants(child.pid) <= below
        assert footprint.pss_bytes(child.pid) > 1_000_000
        assert footprint.pss_bytes(2**22 + 12345) == 0  # gone or never there
    finally:
        child.kill()
        child.wait()


def test_a_memory_cgroup_holds_a_process_to_its_limit_or_is_refused_without_rights():
    with footprint.memory_cgroup(256 * 2**20) as cgroup:
        if cgroup is None:  # an ordinary user: the runs fall back to RLIMIT_AS
            assert os.geteuid() != 0 or not footprint._own_cgroups()
            return
        grow = "x = bytearray(512 * 2**20); x[::4096] = b'a' * len(x[::4096]); print('survived')"
        enter = f"open({str(cgroup.path / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid())); {grow}"
        result = subprocess.run([sys.executable, "-c", enter], capture_output=True, text=True)
        assert result.returncode == -9 and "survived" not in result.stdout
        assert cgroup.oom_kills() >= 1 and cgroup.peak() <= 256 * 2**20
        path = cgroup.path
    assert not path.exists()


def test_an_ordinary_user_cannot_make_a_cgroup_and_gets_the_address_space_limit_instead():
    if os.geteuid() != 0:
        with footprint._limited(2 * GiB, "auto") as (cgroup, address_space, how):
            assert cgroup is None and address_space == 2 * GiB and how == "address space 2.0 GB (RLIMIT_AS)"
        return
    # A forked child that drops root for good: it keeps the modules this process loaded, so it needs no
    # interpreter or checkout that `nobody` could reach (pyenv under /root, a mode-700 folder).
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            os.setgid(nobody.pw_gid)
            os.setgroups([])
            os.setuid(nobody.pw_uid)
            with footprint._limited(2 * GiB, "auto") as limits:
                said = f"{limits[0]} {limits[1]} {limits[2]}"
        except BaseException as exc:  # report everything to the parent
            said = repr(exc)
        finally:
            os.write(write, said.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    assert said == f"None {2 * GiB} address space 2.0 GB (RLIMIT_AS)"


def test_limits_by_mechanism():
    with footprint._limited(None, "auto") as limits:
        assert limits == (None, None, "none")
    with footprint._limited(GiB, "rlimit") as limits:
        assert limits == (None, GiB, "address space 1.0 GB (RLIMIT_AS)")
    with footprint._limited(GiB, "both") as (cgroup, address_space, how):
        assert address_space == GiB and how.endswith("address space 1.0 GB (RLIMIT_AS)")
        assert (cgroup is None) == (" + " not in how)
    with pytest.raises(ValueError, match="mechanism"):
        with footprint._limited(GiB, "ulimit"):
            pass


@pytest.mark.usefixtures("checks_database")
def test_the_server_processes_of_a_database_leave_other_databases_backends_out(checks_database):
    import psycopg

    from pgcourse import target

    tgt = target.load(say=lambda *_: None)
    server = footprint.ServerProcesses(tgt.admin, checks_database)
    try:
        with psycopg.connect(os.environ["DATABASE_URL"]) as mine, tgt.admin.connect() as other:
            pids = server.pids()
            assert mine.info.backend_pid in pids and other.info.backend_pid not in pids
            assert server.postmaster in pids and footprint.pss_bytes(server.postmaster) > 0
            assert len(pids) >= 3  # the postmaster, background processes, this backend
    finally:
        server.close()


def test_the_memory_benchmark_passes_ruff_and_reads_sizes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", str(ROOT / "benchmarks")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import memory as benchmark
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("memory", None)
    assert (benchmark.size("2G"), benchmark.size("1.5G"), benchmark.size("512M")) == (2 * GiB, int(1.5 * GiB), GiB // 2)
    assert benchmark.gb(1.5 * GiB) == "1.50 GB"
