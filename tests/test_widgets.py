"""The live views run headless with stable outputs, leave no thread or session behind, and carry a static
rendering for readers where widgets do not run: nbval, comparing a fresh run, sees the same outputs."""

from __future__ import annotations

import base64

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pgcourse import target
from pgcourse.notebooks import execute, fresh_database, sessions_in
from pgcourse.widgets import ConnectionMonitor, RerunControl, sparkline
from tests.test_static_reading import run_nbval, static_reading_problems

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
PNG = "image/png"  # the monitor's chart: its counts race, and nbval does not compare images


def outputs(nb) -> list:
    """What nbval compares: everything but widget ids and images."""
    return [[{"output_type": out.output_type, "text": out.get("text"),
              "data": {k: v for k, v in out.get("data", {}).items() if k not in (WIDGET_VIEW, PNG)}}
             for out in cell.outputs] for cell in nb.cells]


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
            if len(runs) == 2:  # nbval runs the notebook afresh and compares it with the saved run
                nbformat.write(runs[1], path)
                checked = run_nbval(path, tgt.environment(dbname))
                assert checked.returncode == 0, checked.stdout[-3000:]
    first, second = outputs(runs[0]), outputs(runs[1])
    assert first == second
    shown = first[0][0]["data"]
    assert shown["text/plain"].startswith("ConnectionMonitor(database='nb_widgets_")
    assert WIDGET_VIEW in runs[0].cells[0].outputs[0]["data"]
    chart = base64.b64decode(runs[0].cells[0].outputs[0]["data"][PNG])  # added by stop(), two cells later
    assert chart.startswith(b"\x89PNG")
    assert static_reading_problems(runs[0]) == []
    assert first[1][0]["text"].startswith("{'total': 3, 'by_state': {'idle': 3}, 'by_application': {'widget-test': 3}}")
    assert first[2][0]["text"] == "{'total': 0, 'by_state': {}, 'by_application': {}} 3 False []\n"
    assert first[3][0]["data"]["text/plain"] == "RerunControl('size')"
    html = first[3][0]["data"]["text/html"]
    assert "size: <b>[1]</b> 2 <button disabled>Run</button><br>Pick a value and press Run." in html


class FakeDisplay:
    """Stands in for IPython's display: records what a widget shows and how it updates it."""

    def __init__(self):
        self.shown: list[dict] = []
        self.updates: list[dict] = []

    def __call__(self, bundle, raw=False, display_id=None):
        assert raw and display_id is True
        self.shown.append(bundle)
        return self

    def update(self, bundle, raw=False):
        assert raw
        self.updates.append(bundle)


def test_monitor_adds_its_chart_at_stop_and_changes_nothing_nbval_compares(monkeypatch):
    fake = FakeDisplay()
    monkeypatch.setattr("IPython.display.display", fake)
    monitor = ConnectionMonitor("postgresql://learner@127.0.0.1:5432/course", roles=["learner_limited"])
    monitor._ipython_display_()
    monitor.record, monitor.peak, monitor._limit = [(0.0, 0), (0.2, 5), (0.4, 3), (0.6, 0)], 5, "role learner_limited limit 5"
    monitor.stop()  # never started: no thread, no connection; it still draws what it recorded
    (before,), (after,) = fake.shown, fake.updates
    assert set(before) == {"text/plain", WIDGET_VIEW} and set(after) == {"text/plain", WIDGET_VIEW, PNG}
    assert after["text/plain"] == before["text/plain"] == "ConnectionMonitor(database='course', roles=['learner_limited'])"
    assert after[WIDGET_VIEW] == before[WIDGET_VIEW]
    assert base64.b64decode(after[PNG]).startswith(b"\x89PNG")
    monitor.stop()  # a second stop updates nothing again
    assert len(fake.updates) == 1


@pytest.mark.parametrize("values, value, picked", [([1, 2, 4], 2, "1 <b>[2]</b> 4"), (["a&b", "c"], "c", "a&amp;b <b>[c]</b>")])
def test_rerun_control_draws_itself_in_fixed_html(values, value, picked):
    control = RerunControl(lambda n: f"ran {n}", label="pool size", values=values, value=value)
    bundle = control._repr_mimebundle_()
    assert bundle["text/plain"] == "RerunControl('pool size')"
    assert f"pool size: {picked} <button disabled>Run</button><br>Pick a value and press Run." in bundle["text/html"]
    assert bundle["text/html"] == RerunControl(lambda n: "", label="pool size", values=values, value=value).static_html()


def test_sparkline_scales_to_the_largest_value():
    svg = sparkline([0, 5, 10], width=100, height=20)
    assert 'points="0.0,19.0 50.0,10.0 100.0,1.0"' in svg
    assert sparkline([3]) == ""
