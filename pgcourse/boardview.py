"""The instructor's progress board: learners x exercises, who is stuck where and on which failure message.

Read as the admin (a superuser: the table's policies do not apply to it), drawn as text about 100 columns
wide, one row per learner, so that it reads on a projector at 1280x720 with a large font. `render` is a
pure function of what was read: the `--once` rendering is what the tests compare.

The rows are written by the learners' own code, so neither end trusts them: the table refuses control
characters, and the board still prints every text it read through `board.printable` (an escape sequence or a
line break shows as `\\x1b`, `\\n`, never acts on the instructor's terminal). It reads only what it shows,
computed in SQL: per learner, database, lesson and exercise the latest outcome, whether it was ever passed
and its failed runs; only the room's seats when there is a room file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from . import board

ROOM_FILE = board.ROOT / ".room" / "room.json"
SYMBOLS = {"passed": "✓", "failed": "✗", "error": "!", "not done": "?"}
UNTRIED = "·"
LEGEND = "✓ passed  ✗ failed  ? not written yet  · not tried"
WIDTH = 100
COLOURS = {"✓": "\x1b[32m", "✗": "\x1b[31m", "!": "\x1b[31m", "?": "\x1b[33m"}


@dataclass
class Seat:
    """One learner on the board: the role that records and the database its checks ran against."""

    name: str
    role: str
    database: str
    last: dict[tuple[str, int], str] = field(default_factory=dict)  # (lesson, exercise) -> its latest outcome
    passed: set[tuple[str, int]] = field(default_factory=set)
    failures: Counter = field(default_factory=Counter)  # (lesson, exercise) -> failed or error runs
    latest: tuple[tuple[str, int], str, str] | None = None  # the last outcome of all: exercise, outcome, message

    def symbol(self, key: tuple[str, int]) -> str:
        return "✓" if key in self.passed else SYMBOLS.get(self.last.get(key, ""), UNTRIED)

    @property
    def stuck(self) -> tuple[tuple[str, int], int, str] | None:
        """The exercise this learner failed last and has not passed since: (exercise, failed runs, message)."""
        if self.latest is None:
            return None
        key, outcome, message = self.latest
        if outcome not in ("failed", "error") or key in self.passed:
            return None
        return key, self.failures[key], message


def room_seats(path: Path | None = None) -> list[Seat] | None:
    """The room's learners from the room file (`room create` writes it), or None without a room."""
    path = path or Path(os.environ.get("PGCOURSE_ROOM_FILE") or ROOM_FILE)
    try:
        learners = json.loads(path.read_text())["learners"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [Seat(name, entry["role"], entry["database"]) for name, entry in sorted(learners.items())]


_LATEST_SQL = """
SELECT DISTINCT ON (learner, database, lesson, exercise)
       learner::text, database, lesson, exercise, outcome, message,
       bool_or(outcome = 'passed') OVER w, count(*) FILTER (WHERE outcome IN ('failed', 'error')) OVER w, at, id
FROM progress.outcomes
WHERE exercise IS NOT NULL AND database NOT LIKE 'nb\\_%%'
  AND (%(roles)s::text[] IS NULL
       OR (learner::text, database) IN (SELECT * FROM unnest(%(roles)s::text[], %(databases)s::text[])))
WINDOW w AS (PARTITION BY learner, database, lesson, exercise)
ORDER BY learner, database, lesson, exercise, at DESC, id DESC
"""


def read(admin, seats: list[Seat] | None = None) -> list[Seat]:
    """Fill the seats from the table: per exercise its latest outcome, whether it was ever passed and its failed
    runs, the seat's last outcome of all. Without seats: one per role and database that recorded anything,
    the test harness's databases (`nb_...`) left out."""
    params = {"roles": [s.role for s in seats] if seats is not None else None,
              "databases": [s.database for s in seats] if seats is not None else None}
    with admin.connect(board.PROGRESS_DB) as conn:
        rows = conn.execute(_LATEST_SQL, params).fetchall()
    if seats is None:
        pairs = sorted({(learner, database) for learner, database, *_ in rows})
        seats = [Seat(learner if database == "course" else f"{learner}/{database}", learner, database)
                 for learner, database in pairs]
    by_key = {(s.role, s.database): s for s in seats}
    newest: dict[tuple[str, str], tuple] = {}
    for learner, database, lesson, exercise, outcome, message, passed, failures, at, row_id in rows:
        seat = by_key.get((learner, database))
        if seat is None:
            continue
        key = (lesson, exercise)
        seat.last[key] = outcome
        if passed:
            seat.passed.add(key)
        if failures:
            seat.failures[key] = failures
        if (at, row_id) > newest.get((learner, database), (at, -1)):
            newest[(learner, database)] = (at, row_id)
            seat.latest = (key, outcome, message)
    return seats


def _label(key: tuple[str, int]) -> str:
    return f"{key[0]}.{key[1]}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def render(seats: list[Seat], exercises: tuple[board.Exercise, ...], width: int = WIDTH,
           colour: bool = False) -> str:
    """The board as text: a header, a row per learner (a character per exercise, grouped by lesson, exercises
    passed of the total, the exercise it is stuck on with its failed runs and last message), a footer."""
    lessons: dict[str, list[int]] = {}
    for e in exercises:
        lessons.setdefault(e.lesson, []).append(e.number)
    clean = board.printable  # every text read (the database's, the room file's) printed as text, never as control
    titles = {(e.lesson, e.number): clean(e.title) for e in exercises}
    name_w = max([7, *(len(clean(s.name)) for s in seats)])
    name_w = min(name_w, 16)
    columns = [(lesson, numbers, max(len(numbers), len(clean(lesson)))) for lesson, numbers in lessons.items()]
    done_w = len(f"{len(exercises)}/{len(exercises)}")
    head = (f"{'learner':<{name_w}}  " + " ".join(f"{clean(lesson):<{w}}" for lesson, _, w in columns)
            + f"  {'done':>{done_w}}  stuck on")
    lines = [_cut(f"Progress board: {len(seats)} learner{'s' * (len(seats) != 1)}, {len(exercises)} exercises"
                  f"   ({LEGEND})", width), head]
    for seat in seats:
        grid = " ".join(f"{''.join(seat.symbol((lesson, n)) for n in numbers):<{w}}" for lesson, numbers, w in columns)
        done = f"{sum(1 for e in exercises if (e.lesson, e.number) in seat.passed)}/{len(exercises)}"
        start = f"{_cut(clean(seat.name), name_w):<{name_w}}  {grid}  {done:>{done_w}}  "
        stuck = seat.stuck
        tail = clean(f"{_label(stuck[0])} ×{stuck[1]} {stuck[2]}") if stuck else ""
        line = (start + _cut(tail, max(0, width - len(start)))).rstrip()
        if colour:
            line = "".join(f"{COLOURS[c]}{c}\x1b[0m" if c in COLOURS and i < len(start) else c
                           for i, c in enumerate(line))
        lines.append(line)
    stuck_on = Counter(s.stuck[0] for s in seats if s.stuck)
    if stuck_on:
        key, count = sorted(stuck_on.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        plural = "s" * (count != 1)
        lines.append(_cut(clean(f"Most stuck: {_label(key)} {titles.get(key, '')}") + f" ({count} learner{plural})", width))
    else:
        lines.append("Nobody is stuck.")
    return "\n".join(lines)


def snapshot(admin, seats: list[Seat] | None = None, width: int = WIDTH, colour: bool = False) -> str:
    """Read and render once: the room's learners when there is a room file, else everyone who recorded."""
    if seats is None:
        seats = room_seats()
    return render(read(admin, seats), board.exercises(), width, colour)


def show(admin, once: bool = False, interval: float = 3.0) -> None:
    """Print the board once, or redraw it in place every `interval` seconds until Ctrl-C."""
    if once:
        print(snapshot(admin))
        return
    tty = sys.stdout.isatty()
    try:
        while True:
            width = max(80, shutil.get_terminal_size((WIDTH, 30)).columns)
            try:
                text = snapshot(admin, width=width, colour=tty)
            except psycopg.Error as exc:  # the server restarting, say: keep trying
                text = board.printable(f"The board cannot be read now ({str(exc).strip().splitlines()[0]});"
                                       " trying again.")
            sys.stdout.write("\x1b[H\x1b[2J" + text + f"\n\nupdated {time.strftime('%H:%M:%S')},"
                             f" every {interval:g} s; Ctrl-C to stop\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        print()
