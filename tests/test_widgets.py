"""The live views run headless with stable outputs, and leave no thread or session behind."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from pgcourse import target
from pgcourse.notebooks import execute, fresh_database, sessions_in
from pgcourse.widgets import sparkline

CELLS = [
    "import os, threading, time\nimport psycopg\nfrom pgcourse.widgets import ConnectionMonitor\n"
    "monitor = ConnectionMonitor(os.environ['DATABASE_URL']).start()\nmonitor",
    "conns = [psycopg.connect(os.environ['DATABASE_URL'], application_name='widget-test') for _ in range(3)]\n"
    "time.sleep(0.6)\nprint(monitor.snapshot())",
    "for c in conns:\n    c.close()\ntime.sleep(0.6)\nmonitor.stop()\n"
    "print(monitor.snapshot(), monitor.peak, monitor.running,"
    " [t.name for t in threading.enumerate() if t.name == 'pgcourse-monitor'])",
    "from pgcourse.widgets import RerunControl\nRerunControl(lambda n: f'ran {n}', label='size', values=[1, 2], value=1)",
]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # holds a random model id; nbval skips it too


def outputs(nb) -> list:
    return [[{"output_type": out.output_type, "text": out.get("text"),
              "data": {k: v for k, v in out.get("data", {}).items() if k != WIDGET_VIEW}} for out in cell.outputs]
            for cell in nb.cells]


def test_monitor_runs_headless_with_the_same_outputs_twice(tmp_path):
    nb = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "monitor.ipynb"
    nbformat.write(nb, path)
    tgt = target.load(say=lambda *_: None)
    runs = []
    for _ in range(2):
        with fresh_database(tgt, "widgets") as dbname:  # the same name both times: outputs compare exactly
            runs.append(execute(path, tgt, dbname))
            assert sessions_in(tgt, dbname, wait=2.0) == [], "the monitor left its session open"
    first, second = outputs(runs[0]), outputs(runs[1])
    assert first == second
    shown = first[0][0]["data"]
    assert shown["text/plain"].startswith("ConnectionMonitor(database='nb_widgets_")
    assert WIDGET_VIEW in runs[0].cells[0].outputs[0]["data"]
    assert first[1][0]["text"].startswith("{'total': 3, 'by_state': {'idle': 3}, 'by_application': {'widget-test': 3}}")
    assert first[2][0]["text"] == "{'total': 0, 'by_state': {}, 'by_application': {}} 3 False []\n"
    assert first[3][0]["data"]["text/plain"] == "RerunControl('size')"


def test_sparkline_scales_to_the_largest_value():
    svg = sparkline([0, 5, 10], width=100, height=20)
    assert 'points="0.0,19.0 50.0,10.0 100.0,1.0"' in svg
    assert sparkline([3]) == ""
