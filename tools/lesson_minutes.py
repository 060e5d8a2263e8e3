"""Teaching and exercise minutes per lesson, from the notebooks and a measured test run.

Measured: the words of prose, the code cells, and the exercises' written lines come from the
notebooks (and the service files exercises 09 and 10 ask the learner to fix); run times come from
the logs of full test runs (`make test 2>&1 | tee full.log`: pytest.ini asks for `--durations 0
--durations-min 1.0`, so the log lists every notebook cell nbval ran for 1.0 s or longer). A cell under the threshold is not listed: it is counted at
`--floor` seconds (by default the threshold itself, so the run time is an upper bound). With
several logs, each cell counts at the slowest of its runs. nbval's "Cell N" is the N-th code cell.

Assumed (not measured with learners, and said so in docs/instructor.md): the rates below.

    python tools/lesson_minutes.py /tmp/h19/root313.log /tmp/h19/user.log
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent

EXPLAIN_WPM = 130  # words of prose an instructor explains (or a room reads along) per minute
MINUTES_PER_CELL = 1.0  # to run a code cell live and talk about what it shows
READ_WPM = 150  # a learner reading an exercise's task (the lessons' own rate for a newcomer)
MINUTES_PER_LINE = 2.0  # to work out, write and correct one line of an answer
CHECK_RUNS = 3  # a learner runs the check about three times: the stub, a wrong answer, the right one
FLOOR_S = 1.0  # the seconds a cell under the log's threshold is counted at

DURATION = re.compile(r"^(\d+(?:\.\d+)?)s call\s+(\S+\.ipynb)::Cell (\d+)\s*$")
EXERCISE = re.compile(r"^## Exercise (\d+)\b[:\s]*(.*)$", re.M)
SERVICE_FILE = re.compile(r"""\(\s*["'](\d\d_\w+\.py)["']""")
LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
WORD = re.compile(r"[\w'’.-]*\w")
STATED = re.compile(r"\*\*Time\*\*: about (\d+) minutes")  # the lesson's own estimate, in its first cells


def cell_times(logs: list[Path]) -> dict[str, dict[int, float]]:
    """{notebook path: {cell index: seconds}}, the slowest of the logs for each cell (top-level lines only)."""
    times: dict[str, dict[int, float]] = defaultdict(dict)
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            found = DURATION.match(line)  # a nested run's lines start with "E " and do not match
            if found:
                seconds, path, cell = float(found[1]), found[2], int(found[3])
                times[path][cell] = max(seconds, times[path].get(cell, 0.0))
    return times


def words(text: str) -> int:
    return len(WORD.findall(LINK.sub(r"\1", text)))


def prose_words(nb: nbformat.NotebookNode) -> int:
    """Words of the markdown cells (the generated navigation cell left out) and of generated conclusions."""
    total = 0
    for cell in nb.cells:
        if "navigation" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            total += words(cell.source)
        elif cell.cell_type == "code":
            for output in cell.get("outputs", []):
                total += words(output.get("data", {}).get("text/markdown", ""))
    return total


def run_seconds(path: str, nb: nbformat.NotebookNode, times: dict[str, dict[int, float]],
                floor: float, warn) -> tuple[float, int]:
    """Measured seconds of a notebook's cells (unlisted code cells at the floor), and how many were listed."""
    listed = times.get(path, {})
    code = set(range(sum(cell.cell_type == "code" for cell in nb.cells)))  # nbval numbers code cells only
    stale = sorted(set(listed) - code)
    if stale:
        warn(f"{path}: the log lists cells {stale}; the notebook has {len(code)} code cells now")
    unlisted = len(code - set(listed))
    return sum(listed.values()) + floor * unlisted, len(listed)


def code_lines(text: str) -> list[str]:
    """Lines that carry code: not blank, not a comment alone."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def solution_lines(source: str) -> list[str]:
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == "### BEGIN SOLUTION":
            inside = True
        elif line.strip() == "### END SOLUTION":
            inside = False
        elif inside:
            out.append(line)
    return code_lines("\n".join(out))


def fixed_lines(name: str) -> int:
    """Lines of a solutions/ service file that its exercises/ twin lacks: what the learner writes or changes."""
    solution = code_lines((ROOT / "solutions" / name).read_text())
    stub = code_lines((ROOT / "exercises" / name).read_text())
    return sum(len(solution[j1:j2]) for tag, _, _, j1, j2 in
               difflib.SequenceMatcher(None, stub, solution, autojunk=False).get_opcodes() if tag != "equal")


@dataclass
class Exercise:
    lesson: str
    number: int
    title: str
    task_words: int = 0
    lines: int = 0
    check_s: float = 0.0
    check_listed: bool = False

    def minutes(self) -> float:
        return self.task_words / READ_WPM + self.lines * MINUTES_PER_LINE + CHECK_RUNS * self.check_s / 60


def exercises_of(path: Path, times: dict[str, dict[int, float]], floor: float) -> list[Exercise]:
    nb = nbformat.read(path, as_version=4)
    key = path.relative_to(ROOT).as_posix()
    lesson, found, current, ordinal = path.name[:2], [], None, -1
    for cell in nb.cells:
        ordinal += cell.cell_type == "code"  # nbval's "Cell N" counts code cells only
        if cell.cell_type == "markdown":
            heading = EXERCISE.search(cell.source)
            if heading:
                current = Exercise(lesson, int(heading[1]), heading[2].strip())
                found.append(current)
            if current and "navigation" not in cell.metadata.get("tags", []):
                current.task_words += words(cell.source)
            continue
        if current is None:
            continue
        current.lines += len(solution_lines(cell.source))
        if "check" in cell.metadata.get("tags", []):
            for name in SERVICE_FILE.findall(cell.source):
                current.lines += fixed_lines(name)
            seconds = times.get(key, {}).get(ordinal)
            current.check_listed = seconds is not None
            current.check_s = seconds if seconds is not None else floor
    return found


@dataclass
class Lesson:
    number: str
    notebooks: list[str] = field(default_factory=list)
    words: int = 0
    cells: int = 0
    run_s: float = 0.0
    exercises: list[Exercise] = field(default_factory=list)

    def teaching(self) -> float:
        return self.words / EXPLAIN_WPM + self.cells * MINUTES_PER_CELL + self.run_s / 60

    def exercise_minutes(self) -> float:
        return sum(e.minutes() for e in self.exercises)


def measure(logs: list[Path], floor: float, warn) -> tuple[dict[str, Lesson], list[tuple]]:
    times = cell_times(logs)
    lessons: dict[str, Lesson] = {}
    rows = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb")):
        key = path.relative_to(ROOT).as_posix()
        nb = nbformat.read(path, as_version=4)
        lesson = lessons.setdefault(path.name[:2], Lesson(path.name[:2]))
        n_words = prose_words(nb)
        n_cells = sum(cell.cell_type == "code" for cell in nb.cells)
        seconds, listed = run_seconds(key, nb, times, floor, warn)
        lesson.notebooks.append(path.stem)
        lesson.words += n_words
        lesson.cells += n_cells
        lesson.run_s += seconds
        stated = next((m[1] for cell in nb.cells[:3] if cell.cell_type == "markdown"
                       for m in [STATED.search(cell.source)] if m), "")
        rows.append((path.stem, n_words, n_cells, listed, seconds,
                     n_words / EXPLAIN_WPM + n_cells * MINUTES_PER_CELL + seconds / 60, stated))
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*_exercises.ipynb")):
        lessons.setdefault(path.name[:2], Lesson(path.name[:2])).exercises = exercises_of(path, times, floor)
    return lessons, rows


def tables(lessons: dict[str, Lesson], rows: list[tuple]) -> str:
    out = ["| lesson | notebooks | prose words | code cells | run time (s) | teaching min "
           "| exercises | lines written | checks, one run each (s) | exercise min |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for lesson in lessons.values():
        parts = ", ".join(name.split("_")[0] for name in lesson.notebooks)
        checks = sum(e.check_s for e in lesson.exercises)
        out.append(f"| {lesson.number} | {parts} | {lesson.words:,} | {lesson.cells} | {lesson.run_s:.0f} "
                   f"| {lesson.teaching():.0f} | {len(lesson.exercises)} | {sum(e.lines for e in lesson.exercises)} "
                   f"| {checks:.0f} | {lesson.exercise_minutes():.0f} |")
    teach = sum(lesson.teaching() for lesson in lessons.values())
    practise = sum(lesson.exercise_minutes() for lesson in lessons.values())
    out.append(f"| all | | | | | {teach:.0f} | | | | {practise:.0f} |")
    out += ["", "| notebook | prose words | code cells | cells of 1 s or more | run time (s) | teaching min "
            "| the lesson says (min) |", "|---|--:|--:|--:|--:|--:|--:|"]
    out += [f"| {name} | {w:,} | {c} | {listed} | {s:.0f} | {m:.0f} | {stated} |"
            for name, w, c, listed, s, m, stated in rows]
    out += ["", "| exercise | task words | lines written | check run (s) | minutes |", "|---|--:|--:|--:|--:|"]
    for lesson in lessons.values():
        for e in lesson.exercises:
            check = f"{e.check_s:.1f}" if e.check_listed else f"< {FLOOR_S:.0f}"
            out.append(f"| {e.lesson}.{e.number} {e.title} | {e.task_words} | {e.lines} | {check} | {e.minutes():.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path,
                        help="logs of full test runs (make test; pytest.ini adds --durations 0 --durations-min 1.0)")
    parser.add_argument("--floor", type=float, default=FLOOR_S,
                        help="seconds counted for a cell the log does not list (default: %(default)s)")
    args = parser.parse_args(argv)
    lessons, rows = measure(args.logs, args.floor, lambda message: print(message, file=sys.stderr))
    print(f"Rates assumed: prose explained at {EXPLAIN_WPM} words a minute; {MINUTES_PER_CELL:g} min per code cell "
          f"run and discussed, plus its measured run time; an exercise's task read at {READ_WPM} words a minute, "
          f"{MINUTES_PER_LINE:g} min per line the answer adds to the stub, and {CHECK_RUNS} runs of its check. "
          f"Cells under 1.0 s counted at {args.floor:g} s; each cell at the slowest of {len(args.logs)} log(s).\n")
    print(tables(lessons, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
