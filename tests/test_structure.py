"""The repository's structure: lesson anatomy, generated parts in sync, no secrets, no string-built SQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from pgcourse import envfile, provision, target
from pgcourse.authoring import LESSON_NAME, NAV_TAG, lessons, nav_source
from pgcourse.lint import WRONG_EXAMPLE, string_built_sql
from pgcourse.server import ROOT

LESSONS = lessons()
NOTEBOOKS = sorted([*LESSONS, *(ROOT / "solutions").glob("*.ipynb"), *(ROOT / "exercises").glob("*.ipynb")])
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def markdown(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_lessons_are_numbered_from_00_without_gaps():
    assert LESSONS, "no lessons in notebooks/"
    assert all(LESSON_NAME.match(p.name) for p in (ROOT / "notebooks").glob("*.ipynb"))
    numbers = sorted({int(p.name[:2]) for p in LESSONS})
    assert numbers == list(range(len(numbers)))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_has_title_objectives_needs_time_and_recap(path):
    nb = read(path)
    texts = markdown(nb)
    assert nb.cells[0].source.startswith(f"# {path.name[:2]} "), "first cell: '# NN Title'"
    learn = next(t for t in texts if "**What you'll learn**" in t)
    bullets = [line for line in learn.split("**What you need**")[0].splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 6
    assert any("**What you need**" in t for t in texts) and any("**Time**" in t for t in texts)
    assert any(t.startswith("## In this notebook you") for t in texts)
    assert any("**Upstream documentation**" in t for t in texts)
    headings = [line for t in texts for line in t.splitlines() if line.startswith("## ")]
    assert all(re.match(r"## [A-Z][a-z]+ ", h) for h in headings), headings


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_setup_cell_reads_database_url_from_the_environment(path):
    first = code_cells(read(path))[0].source
    assert 'os.environ.get("DATABASE_URL")' in first or 'os.environ["DATABASE_URL"]' in first
    assert "check_database" in first


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_navigation_cell_is_generated_and_current(path):
    last = read(path).cells[-1]
    assert NAV_TAG in last.metadata.get("tags", []), "run `make nav`"
    assert last.source == nav_source(path), "navigation is stale: run `make nav`"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "exercises" not in p.parts], ids=lambda p: p.name)
def test_committed_run_is_clean_top_to_bottom(path):
    nb = read(path)
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), "re-execute with `make execute`"
    assert "widgets" not in nb.metadata, "widget state stored: re-execute with `make execute`"
    assert not [c for c in nb.cells if "execution" in c.metadata or "ExecuteTime" in c.metadata]
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "exercises" not in p.parts], ids=lambda p: p.name)
def test_no_warning_leaks_into_committed_outputs(path):
    for i, cell in enumerate(code_cells(read(path))):
        leaked = [out.text for out in cell.outputs if out.get("name") == "stderr"]
        assert not leaked, f"code cell {i} printed to stderr (a warning or a log line): {leaked[0][:200]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_is_skipped_and_ignored_output_says_why(path):
    for cell in code_cells(read(path)):
        tags = cell.metadata.get("tags", [])
        assert "nbval-skip" not in tags and "NBVAL_SKIP" not in cell.source
        if "nbval-ignore-output" in tags or "NBVAL_IGNORE_OUTPUT" in cell.source:
            assert "# Output varies:" in cell.source, "say why the output cannot be made stable"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_sql_built_from_strings_outside_wrong_examples(path):
    for i, cell in enumerate(code_cells(read(path))):
        if WRONG_EXAMPLE not in cell.metadata.get("tags", []):
            assert string_built_sql(cell.source) == [], f"code cell {i}"


def test_package_builds_no_sql_from_strings():
    for module in sorted((ROOT / "pgcourse").rglob("*.py")):
        assert string_built_sql(module.read_text()) == [], module.name


@pytest.mark.parametrize("snippet, flagged", [
    ('cur.execute(f"SELECT * FROM users WHERE name = \'{name}\'")', True),
    ('cur.execute("SELECT * FROM users WHERE id = %d" % uid)', True),
    ('cur.execute("DELETE FROM t WHERE id = {}".format(i))', True),
    ('q = "SELECT * FROM t WHERE name = \'" + name + "\'"', True),
    ('cur.execute("SELECT * FROM users WHERE name = %s", (name,))', False),
    ('sql.SQL("DROP TABLE {}").format(sql.Identifier(t))', False),
    ('print(f"{n} rows from the table")', False),
    ('!psql -c "SELECT 1 FROM t" "$DATABASE_URL"', False),
    ('say(f"The server runs from a copy of its binaries in {path}.")', False),
    ('q = f"select * from {table}"', True),
])
def test_the_string_built_sql_detector(snippet, flagged):
    assert bool(string_built_sql(snippet)) is flagged


def test_no_credentials_in_any_notebook_or_doc():
    values = envfile.read(target.env_path())
    secrets = [p for key in ("DATABASE_URL", "LIMITED_DATABASE_URL") if key in values
               for p in [__import__("urllib.parse").parse.urlsplit(values[key]).password] if p]
    literal = re.compile(r"postgres\w*(\+\w+)?://[^:/@\s]+:(?!\*\*\*@|PASSWORD@|YOUR_PASSWORD@|\.\.\.@)[^@\s{}]+@")  # {…}: a template
    for path in [*NOTEBOOKS, *DOCS]:
        text = path.read_text()
        assert not literal.search(text), f"{path.name}: a URL with a password"
        for secret in secrets:
            assert secret not in text, f"{path.name} holds the learner's real password"


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make lab" in first_block and "make test" in first_block


@pytest.mark.parametrize("doc", [*DOCS, *LESSONS], ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(doc):
    text = doc.read_text() if doc.suffix == ".md" else "\n".join(markdown(read(doc)))
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", link):
            assert (doc.parent / link).exists(), f"{doc.name} links to missing {link}"


def test_readme_tables_of_the_learner_rights_are_those_of_learner_rights():
    """README's rights tables are provision.rights_table(), written from LEARNER_RIGHTS and WITHHELD."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- rights-table -->\n(.*?)\n *<!-- /rights-table -->", text, re.S)
    assert found, "README has no <!-- rights-table --> ... <!-- /rights-table --> block"
    shown = "\n".join(line.removeprefix("  ").rstrip() for line in found.group(1).splitlines())
    assert shown == provision.rights_table(), "README's rights tables differ from provision.rights_table(): paste it"
    for right in provision.LEARNER_RIGHTS:
        assert f"`{right.name}`" in shown


def test_every_make_target_is_documented_in_help():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split()
    documented = set(re.findall(r"^([a-z0-9-]+):.*(?:## |#: )", makefile, re.M))  # learner's / authors'
    assert set(phony) <= documented
    readme = (ROOT / "README.md").read_text()
    assert not {t for t in documented if f"make {t}" not in readme}, "every make target is in the README"


def test_code_and_notebooks_pass_ruff():
    folders = [f for f in ("pgcourse", "tests", "notebooks", "solutions", "exercises") if (ROOT / f).is_dir()]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", *folders],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == "exec make test"


def test_requirements_are_pinned_and_cover_requirements_in():
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, ver = line.partition("==")
            assert sep and ver, f"not pinned: {line}"
            pinned[re.sub(r"[-_.]+", "-", name.strip().lower())] = ver
    for line in (ROOT / "requirements.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name = re.split(r"[\[<>=!~ ]", line.strip(), maxsplit=1)[0]
            assert re.sub(r"[-_.]+", "-", name.lower()) in pinned, f"{name} is not in requirements.txt: `make lock`"
