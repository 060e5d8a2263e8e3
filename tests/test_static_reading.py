"""Committed notebooks read well where nothing runs (GitHub, nbviewer): no local paths in outputs, no
progress bar saved unfinished, no library frames in a deliberate failure, each notebook on %xmode Minimal.

The scanner is proven on fabricated notebooks; the progress bar and the prose helper are proven in a real
kernel, with nbval comparing a fresh run against what nbclient (`make execute`) saved.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from pgcourse.progress import meter
from pgcourse.prose import below_within_above, listing, more_or_less, sentence
from pgcourse.server import ROOT

NOTEBOOKS = sorted(p for folder in ("notebooks", "solutions", "exercises") for p in (ROOT / folder).glob("*.ipynb"))
XMODE = "%xmode Minimal"

LOCAL_PATH = re.compile(r"/root\b|/home/|/Users/|\.pyenv|/work/|site-packages|\.venv\b")
BAR = re.compile(r"(\d{1,3})%\|[^|\n]*\|\s*(\d+)/(\d+)")
BAR_WITHOUT_TOTAL = re.compile(r"\b\d+it \[")
FRAME = re.compile(r"^\s*(File \S|Cell In\[|Traceback \(most recent call last\))", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def output_texts(out) -> list[str]:
    """Every text an output shows a reader: stream text, text/* and JSON data, error name, value and traceback."""
    if out.output_type == "stream":
        return [out.text]
    if out.output_type == "error":
        return [out.ename, out.evalue, *out.traceback]
    return [str(v) for k, v in out.get("data", {}).items() if not k.startswith("image/") and "widget" not in k]


def static_reading_problems(nb) -> list[str]:
    """What reads badly in a notebook's saved outputs, one line per problem."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts = [ANSI.sub("", text) for text in output_texts(out)]
            for text in texts:
                if match := LOCAL_PATH.search(text):
                    found.append(f"cell {i}: a local path ({match.group()!r}) in {text.strip()[:80]!r}")
                for bar in BAR.finditer(text):
                    if int(bar.group(1)) < 100 or bar.group(2) != bar.group(3):
                        found.append(f"cell {i}: a progress bar saved unfinished: {bar.group()!r}")
                if BAR_WITHOUT_TOTAL.search(text):
                    found.append(f"cell {i}: a progress bar without a total: {text.strip()[:80]!r}")
            if out.output_type == "error" and FRAME.search("\n".join(texts)):
                found.append(f"cell {i}: a traceback with frames ({out.ename}): set {XMODE} in the setup cell")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_outputs_read_well_where_nothing_runs(path):
    assert static_reading_problems(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_setup_cell_sets_short_tracebacks(path):
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert XMODE in first.source.splitlines(), f"the setup cell should have a line {XMODE!r}, with a comment on why"


def fabricated(*outputs, tags=()) -> nbformat.NotebookNode:
    cell = new_code_cell("work()", outputs=list(outputs), execution_count=1)
    cell.metadata["tags"] = list(tags)
    return new_notebook(cells=[cell])


def display(text: str) -> nbformat.NotebookNode:
    return new_output("display_data", data={"text/plain": text, "application/vnd.jupyter.widget-view+json": {}})


LIBRARY_TRACEBACK = [
    "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
    "\x1b[31mProgrammingError\x1b[39m                          Traceback (most recent call last)",
    "Cell \x1b[32mIn[21], line 2\x1b[39m\n      1 with psycopg.connect(DATABASE_URL) as conn:\n----> 2     conn.execute(q)",
    "File \x1b[32m/opt/lib/python3.11/psycopg/connection.py:286\x1b[39m, in \x1b[36mConnection.execute\x1b[39m",
    "\x1b[31mProgrammingError\x1b[39m: the query has 0 placeholders but 1 parameters were passed",
]


@pytest.mark.parametrize("bad, problem", [
    (fabricated(new_output("stream", name="stdout", text="wrote /home/ada/course/out.csv\n")), "a local path"),
    (fabricated(new_output("stream", name="stdout", text="see /root/.cache/x\n")), "a local path"),
    (fabricated(new_output("execute_result", data={"text/plain": "'/Users/ada/x'"}, execution_count=1)),
     "a local path"),
    (fabricated(new_output("display_data", data={"text/html": "<pre>/work/main/.venv/lib/x.py</pre>"})),
     "a local path"),
    (fabricated(new_output("error", ename="KeyError", evalue="'~/.pyenv/versions/3.11.7/lib/x'", traceback=[])),
     "a local path"),
    (fabricated(display("measuring:   0%|          | 0/5 [00:00<?, ?it/s]")), "a progress bar saved unfinished"),
    (fabricated(display("pool sizes:  50%|█████     | 3/6 [00:05<00:05, 1.7s/it]")),
     "a progress bar saved unfinished"),
    (fabricated(new_output("stream", name="stderr", text="measuring: 7it [00:03, 2.01it/s]\n")),
     "a progress bar without a total"),
    (fabricated(new_output("error", ename="ProgrammingError", evalue="the query has 0 placeholders",
                           traceback=LIBRARY_TRACEBACK), tags=["raises-exception"]), "a traceback with frames"),
])
def test_the_scanner_catches_what_reads_badly(bad, problem):
    found = static_reading_problems(bad)
    assert found and all(problem in line for line in found), found


def test_the_scanner_passes_what_reads_well():
    good = fabricated(
        display("measuring: 100%|██████████| 5/5"),
        new_output("stream", name="stdout", text="WARNING: password file \"/tmp/lesson02-x/pgpass\" has access\n"),
        new_output("error", ename="ProgrammingError", evalue="the query has 0 placeholders but 1 parameters",
                   traceback=["\x1b[31mProgrammingError\x1b[39m: the query has 0 placeholders but 1 parameters"]),
        new_output("display_data", data={"image/png": "iVBORw0KGgo/home/root/work/"}),  # base64 is not a path
        tags=["raises-exception"])
    assert static_reading_problems(good) == []


def test_the_meter_is_tqdm_text_without_time_or_rate():
    assert meter("measuring", 5, 5) == "measuring: 100%|██████████| 5/5"
    assert meter("measuring", 3, 5) == "measuring:  60%|██████    | 3/5"


def test_the_sentence_fills_units_from_arguments_and_from_the_caller():
    tcp, rows = 0.0099, 1_000_000  # noqa: F841 (the sentence reads both from this frame, as an f-string would)
    text = sentence("""A connect took {tcp:duration}, {verdict} the claimed 20-50 ms, {x:ratio} less;
        {rows:,} rows at {r:rate}, {q:rate requests}, {m:MB}, {share:.0%}.""",
                    verdict=below_within_above(tcp, 0.020, 0.050), x=1078.4, r=143_210.2, q=56.3, m=952.42, share=0.374)
    assert text == ("A connect took 9.9 ms, below the claimed 20-50 ms, 1078× less; 1,000,000 rows at 143,210 rows/s,"
                    " 56 requests/s, 952.4 MB, 37%.")


def test_the_sentence_keeps_paragraphs_and_list_items():
    text = sentence("""One line
        and its continuation.

        - first {n}
        - second""", n=1)
    assert text == "One line and its continuation.\n\n- first 1\n- second"


def test_verdict_words():
    assert [below_within_above(v, 2, 5) for v in (1.9, 2, 5, 5.1)] == ["below", "within", "within", "above"]
    assert (more_or_less(2, 1), more_or_less(1, 2), more_or_less(1, 1)) == ("more", "less", "less")
    assert (listing([]), listing(["a"]), listing(["a", "b"]), listing("abc")) == ("", "a", "a and b", "a, b and c")


def run_nbval(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run plain nbval (no course harness) on a notebook, with the course's sanitize file."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(path), "-c", os.devnull, "-p", "no:cacheprovider",
         "-p", "no:randomly", "-q", "--nbval-sanitize-with", str(ROOT / "tests" / "sanitize.cfg")],
        cwd=path.parent, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def execute_here(nb: nbformat.NotebookNode, path: Path, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Execute like `make execute` (nbclient, no widget state) and save."""
    from nbclient import NotebookClient

    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, record_timing=False, store_widget_state=False).execute(
        env={**os.environ, **(env or {})})
    nbformat.write(nb, path)
    return nb


PROGRESS_CELLS = [
    "import time\nfrom pgcourse.progress import progress\nfor _ in progress(range(4), desc='steps'):\n"
    "    time.sleep(0.02)",
    "with progress(desc='by hand', total=3) as bar:\n    for _ in range(3):\n        bar.update()",
    "import asyncio\nfrom pgcourse import bench\nframe = await bench.compare({'noop': lambda: None}, repeat=3)\n"
    "print(len(frame['samples']['noop']), 'samples')",
    "from pgcourse.prose import conclude\nfast = 0.25\nconclude('It took {fast:duration}, {n} times.', n=3)",
]


def test_progress_is_saved_finished_and_nbval_agrees(tmp_path):
    path = tmp_path / "progress.ipynb"
    nb = execute_here(new_notebook(cells=[new_code_cell(source) for source in PROGRESS_CELLS]), path)
    texts = [[out.get("data", {}).get("text/plain", out.get("text")) for out in cell.outputs] for cell in nb.cells]
    assert texts[0] == ["steps: 100%|██████████| 4/4"]
    assert texts[1] == ["by hand: 100%|██████████| 3/3"]
    assert texts[2] == ["measuring: 100%|██████████| 3/3", "3 samples\n"]
    assert nb.cells[3].outputs[0]["data"]["text/markdown"] == "It took 250.0 ms, 3 times."
    assert all("application/vnd.jupyter.widget-view+json" in cell.outputs[0]["data"] for cell in nb.cells[:3])
    assert not [out for cell in nb.cells for out in cell.outputs if out.get("name") == "stderr"]
    assert static_reading_problems(nb) == []
    result = run_nbval(path)  # nbval sees the first display, not its update: the two must agree
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_bar_that_stops_early_is_saved_as_stopped(tmp_path):
    cell = ("from pgcourse.progress import progress\ntry:\n    for i in progress(range(5), desc='steps'):\n"
            "        if i == 3:\n            raise ValueError('stop')\nexcept ValueError:\n    pass")
    nb = execute_here(new_notebook(cells=[new_code_cell(cell)]), tmp_path / "stopped.ipynb")
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "steps:  60%|██████    | 3/5"
    assert static_reading_problems(nb) == ["cell 0: a progress bar saved unfinished: '60%|██████    | 3/5'"]


def test_progress_outside_a_kernel_is_tqdm_text_on_stderr():
    code = "from pgcourse.progress import progress\nfor _ in progress([1, 2], desc='steps'):\n    pass\nprint('out')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout == "out\n" and "steps: 100%" in result.stderr and "2/2" in result.stderr


def test_progress_needs_a_total_it_can_name():
    from pgcourse.progress import progress

    with pytest.raises(TypeError, match="total="):
        progress((x for x in range(3)), desc="steps")
