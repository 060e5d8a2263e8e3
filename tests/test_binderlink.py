"""The Binder badge: written from the origin remote, never a placeholder in a link."""

from __future__ import annotations

import re
import subprocess

import nbformat
import pytest

from pgcourse import binderlink
from pgcourse.errors import CourseError
from pgcourse.server import ROOT

# A link whose address still holds a stand-in for a real name.
PLACEHOLDER = re.compile(r"\]\((?P<url>[^)\s]*(?:\bOWNER\b|\bYOUR[_-]?[A-Z]+\b|\bUSERNAME\b|<[^>]*>|example\.com)[^)\s]*)\)")


def documents() -> list[tuple[str, str]]:
    texts = [(p.name, p.read_text()) for p in sorted(ROOT.glob("*.md"))]
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            texts.append((f"{folder}/{path.name}", "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")))
    return texts


@pytest.mark.parametrize("name,text", documents(), ids=[n for n, _ in documents()])
def test_no_placeholder_in_any_link(name, text):
    found = [m.group("url") for m in PLACEHOLDER.finditer(text)]
    assert not found, f"{name} links to a placeholder: {found} (the Binder badge: `make binder-link`)"


def test_the_placeholder_check_catches_the_old_badge():
    old = "[![b](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/OWNER/postgres-from-python/main)"
    assert PLACEHOLDER.search(old)


@pytest.mark.parametrize("url", ["https://github.com/acme/pg-course.git", "https://github.com/acme/pg-course",
                                 "git@github.com:acme/pg-course.git", "ssh://git@github.com/acme/pg-course.git",
                                 "https://token@github.com/acme/pg-course.git"])
def test_repository_from_github_remotes(url):
    assert binderlink.repository_from(url) == "acme/pg-course"


@pytest.mark.parametrize("url", ["/srv/git/course.git", "https://gitlab.com/acme/pg-course.git", ""])
def test_no_repository_from_other_remotes(url):
    assert binderlink.repository_from(url) is None


def test_make_binder_link_writes_the_origin_badge(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    readme = tmp_path / "README.md"
    readme.write_text(f"| Binder | {binderlink.START}{binderlink.UNSET}{binderlink.END} | browser |\n")
    with pytest.raises(CourseError, match="not a GitHub repository"):
        binderlink.main(root=tmp_path)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "git@github.com:acme/pg-course.git"],
                   check=True)
    binderlink.main(root=tmp_path)
    assert readme.read_text() == (
        f"| Binder | {binderlink.START}[![Launch lesson 00 on Binder](https://mybinder.org/badge_logo.svg)]"
        "(https://mybinder.org/v2/gh/acme/pg-course/main?urlpath=lab/tree/notebooks/00_welcome.ipynb)"
        f"{binderlink.END} | browser |\n")
    assert not PLACEHOLDER.search(readme.read_text())
