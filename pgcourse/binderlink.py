"""The README's Binder badge, written from the repository the course was cloned from.

A Binder link names a GitHub repository. The course cannot know which one it lives in until it is
pushed there, so the link is never typed by hand: `make binder-link` reads `git remote get-url
origin` (or REPO=owner/name) and writes the badge between the README's binder markers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .errors import CourseError
from .server import ROOT

START, END = "<!-- binder-badge -->", "<!-- /binder-badge -->"
LESSON = "notebooks/00_welcome.ipynb"
GITHUB = re.compile(r"^(?:https://(?:[^@/]+@)?github\.com/|git@github\.com:|ssh://git@github\.com/)"
                    r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:\.git)?/?$")
UNSET = "run `make binder-link` once the course is on GitHub"


def repository_from(url: str) -> str | None:
    """owner/name for a GitHub remote URL (https or ssh), else None."""
    match = GITHUB.match(url.strip())
    return match.group("repo") if match else None


def origin(root: Path = ROOT) -> str | None:
    result = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def badge(repo: str, branch: str = "main") -> str:
    url = f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/{LESSON}"
    return f"[![Launch lesson 00 on Binder](https://mybinder.org/badge_logo.svg)]({url})"


def write(readme: Path, content: str) -> bool:
    """Put `content` between the markers; return whether the README changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise CourseError(f"{readme.name} has no {START} ... {END} markers.", "put them where the badge goes")
    head, rest = text.split(START, 1)
    new = f"{head}{START}{content}{END}{rest.split(END, 1)[1]}"
    if new != text:
        readme.write_text(new)
    return new != text


def main(repo: str = "", branch: str = "main", root: Path = ROOT) -> int:
    url = origin(root)
    repo = repo or (repository_from(url) if url else None) or ""
    if not repo:
        raise CourseError(f"The origin remote ({url or 'none'}) is not a GitHub repository, so there is no Binder link"
                          " to write.", "give it: `make binder-link REPO=owner/name`")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise CourseError(f"{repo!r} is not a GitHub repository name.", "write it as owner/name")
    changed = write(root / "README.md", badge(repo, branch))
    print(f"{'Wrote' if changed else 'README.md already has'} the Binder badge for {repo} ({branch}).")
    return 0
