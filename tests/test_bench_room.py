"""benchmarks/room.py (make bench-room): how it reads a run. The room run itself takes minutes and the whole
machine, so it is not run here; these check what it concludes from the runs it measured: which failed cells
another learner caused, and the figures the closing note quotes."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

from pgcourse import room as rooms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import room as benchmark
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("room", None)
    return benchmark


def run(bench, learner, notebook, seconds, *errors):
    return bench.NotebookRun(learner, notebook, seconds, list(errors))


def phase(bench, n, runs, **figures):
    peaks = {f"bench{i:02d}": {"both": 3, "role": 2, "limited": 1} for i in range(1, n + 1)}
    return bench.Phase(n, runs, wall=figures.get("wall", 10.0), peak_total=4 * n, peak_unknown=1, peak_learner=peaks,
                       kernels_cpu=2.0 * n, server_cpu=1.0 * n, harness_cpu=0.5, load=(1.0, 2.0))


def test_failures_are_told_apart_by_the_learner_alone_and_a_full_server(bench):
    lesson = "code cell 5: AssertionError: the lesson's own"
    alone = phase(bench, 1, [run(bench, "bench01", "00", 10), run(bench, "bench01", "03a", 40, lesson)])
    room = phase(bench, 3, [
        run(bench, "bench01", "00", 20), run(bench, "bench02", "00", 21, "code cell 2: OperationalError: connection"
                                             " failed: FATAL:  sorry, too many clients already"),
        run(bench, "bench03", "00", 22),
        run(bench, "bench01", "03a", 80, lesson), run(bench, "bench02", "03a", 81, lesson,
                                                      "code cell 9: AssertionError: a connect costs 9 round trips"),
        run(bench, "bench03", "03a", 82, lesson)])
    lines = bench.failure_lines(alone, [room])
    assert lines[0].startswith("Failures caused by other learners: 2 failed cell(s), in 2 of 6 notebook runs in rooms")
    text = "\n".join(lines)
    assert ("- 3 learners, 00, code cell 2: OperationalError: 1 of 3 learners (bench02): CAUSED BY OTHER LEARNERS:"
            " the server was full. First: connection failed: FATAL:  sorry, too many clients already") in text
    assert ("- 3 learners, 03a, code cell 9: AssertionError: 1 of 3 learners (bench02): CAUSED BY OTHER LEARNERS:"
            " only in the room, the learner alone passed it (their load). First: a connect costs 9 round trips") in text
    assert ("- 3 learners, 03a, code cell 5: AssertionError: 3 of 3 learners (bench01, bench02, bench03): fails alone"
            " too: the lesson's, not the room's.") in text
    assert text.index("code cell 5: AssertionError: 3 of 3") < text.index("code cell 9:")  # in the cells' order
    assert "- alone, 03a, code cell 5: AssertionError: the lesson's own (the lesson fails for a room learner" in text


def test_a_refusal_the_learner_alone_never_met_is_another_learners_doing(bench):
    alone = phase(bench, 1, [run(bench, "bench01", "03c", 30)])
    refused = ("code cell 7: InsufficientPrivilege: DETAIL:  Only roles with privileges of the role whose process is"
               " being terminated or with privileges of the \"pg_signal_backend\" role may terminate this process.")
    room = phase(bench, 2, [run(bench, "bench01", "03c", 45, refused), run(bench, "bench02", "03c", 44)])
    lines = bench.failure_lines(alone, [room])
    assert lines[0].startswith("Failures caused by other learners: 1 failed cell(s), in 1 of 2 notebook runs")
    assert lines[-1].startswith("- 2 learners, 03c, code cell 7: InsufficientPrivilege: 1 of 2 learners (bench01):"
                                " CAUSED BY OTHER LEARNERS: it reached another learner's session, which the room"
                                " refused (the learner alone passed it). First: DETAIL:  Only roles")


def test_a_name_error_after_a_failed_cell_is_not_counted_again(bench):
    alone = phase(bench, 1, [run(bench, "bench01", "03b", 50)])
    room = phase(bench, 2, [run(bench, "bench01", "03b", 90, "code cell 26: AssertionError: within 25%",
                                "code cell 27: NameError: name 'medians' is not defined"),
                            run(bench, "bench02", "03b", 91)])
    lines = bench.failure_lines(alone, [room])
    assert lines[0].startswith("Failures caused by other learners: 1 failed cell(s), in 1 of 2 notebook runs")
    assert lines[-1].startswith("- 2 learners, 03b, code cell 27: NameError: 1 of 2 learners (bench01): follows from"
                                " an earlier failed cell of the same run.")


def test_no_failure_says_so_and_the_report_has_every_figure(bench):
    alone = phase(bench, 1, [run(bench, "bench01", "00", 10)], wall=10.0)
    rooms_run = [phase(bench, 2, [run(bench, f"bench0{i}", "00", 15 + i) for i in (1, 2)], wall=20.0)]
    room = rooms.Room({"host": "127.0.0.1", "port": 5432, "kind": "bundled"}, 32, 100, {})
    lines = bench.report(alone, rooms_run, ["00"], room, "a bundled server of its own")
    assert lines[0] == ("Failures caused by other learners: none (no full server, no refusal, no cell failed that"
                        " passed alone).")
    assert lines[-1] == "No cell failed."
    table = [line for line in lines if line.startswith("| 2 |")]
    assert table == ["| 2 | 20.00 s | 0 of 2 | 8 (1) | 3 / 3 | 4.00 s, 2.00 s, 500.0 ms | 3.00 s | 0 MB, 0 MB | 1.0 / 2.0 |"]
    assert "| 00 | 10.00 s | 16.50 s / 17.00 s (1.65×) |" in lines
    assert "- 2 learners: wall 20.00 s, 2.00× the alone run's 10.00 s" in "\n".join(lines)


def test_cell_errors_skip_cells_meant_to_raise(bench):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]}, outputs=[
            nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]),
        nbformat.v4.new_code_cell("x", outputs=[
            nbformat.v4.new_output("error", ename="NameError", evalue="\x1b[0;31mname 'x' is not defined\x1b[0m",
                                   traceback=[])]),
    ])
    assert bench.cell_errors(nb) == ["code cell 2: NameError: name 'x' is not defined"]


def test_a_cell_meant_to_raise_that_raises_otherwise_in_the_room_failed(bench):
    alone = phase(bench, 1, [bench.NotebookRun("bench01", "03c", 30, [], {"code cell 6": "OperationalError",
                                                                           "code cell 9": "PoolTimeout"})])
    room = phase(bench, 2, [
        bench.NotebookRun("bench01", "03c", 45, [], {"code cell 6": "InsufficientPrivilege", "code cell 9": None}),
        bench.NotebookRun("bench02", "03c", 44, [], {"code cell 6": "OperationalError", "code cell 9": "PoolTimeout"})])
    bench.compare_raised(alone, [room])
    assert room.runs[0].errors == [
        "code cell 6: InsufficientPrivilege: a cell meant to raise OperationalError (as it did alone) raised"
        " InsufficientPrivilege",
        "code cell 9: NoError: a cell meant to raise PoolTimeout (as it did alone) raised nothing"]
    assert room.runs[1].ok
    lines = bench.failure_lines(alone, [room])
    assert lines[0].startswith("Failures caused by other learners: 2 failed cell(s), in 1 of 2 notebook runs")
    assert "code cell 6: InsufficientPrivilege: 1 of 2 learners (bench01): CAUSED BY OTHER LEARNERS: it reached" in lines[2]
    assert "code cell 9: NoError: 1 of 2 learners (bench01): CAUSED BY OTHER LEARNERS: only in the room" in lines[3]
