"""Sentences written from measured numbers: the conclusion under a measurement, kept short at the call site.

`conclude` takes the sentence itself, with {name:unit} slots where the measured values go, and shows it
as Markdown. The words that depend on a measurement (below / within / above a claim, more / less) come
from the small functions below, so the cell holds the facts, its asserts and the sentence, nothing else.
"""

from __future__ import annotations

import inspect
import re
import string
from collections import ChainMap

from .bench import duration, rate, ratio

UNITS = {
    "duration": duration,  # 12.3 µs / 4.56 ms / 1.23 s
    "ratio": ratio,  # 1.45× / 12×
    "MB": lambda mb: f"{mb:,.1f} MB",
}


class _Units(string.Formatter):
    """str.format with the course's units as format specs: {t:duration}, {x:ratio}, {r:rate requests}, {m:MB}."""

    def format_field(self, value, format_spec: str) -> str:
        if format_spec in UNITS:
            return UNITS[format_spec](value)
        if format_spec == "rate" or format_spec.startswith("rate "):
            return rate(value, format_spec[5:] or "rows")
        return super().format_field(value, format_spec)


def sentence(template: str, /, **values) -> str:
    """The template with its slots filled: from `values`, else from the caller's variables, as in an f-string."""
    caller = inspect.currentframe().f_back
    if caller is not None and caller.f_code.co_name == "conclude":
        caller = caller.f_back
    names = ChainMap(values, caller.f_locals, caller.f_globals) if caller is not None else values
    return _Units().vformat(_reflow(template), (), names)


def _reflow(text: str) -> str:
    """A template written across source lines as Markdown paragraphs: lines joined, list items kept apart."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in paragraph.splitlines()]
        listed = any(re.match(r"([-*]|\d+\.) ", line) for line in lines)
        paragraphs.append("\n".join(lines) if listed else " ".join(lines))
    return "\n\n".join(paragraphs)


def conclude(template: str, /, **values) -> None:
    """Show the sentence, slots filled, as Markdown under the cell: `conclude("It took {t:duration}.")`."""
    from IPython.display import Markdown, display

    display(Markdown(sentence(template, **values)))


def below_within_above(value: float, low: float, high: float) -> str:
    """Where a measured value falls against a claimed range: 'below', 'within' or 'above'."""
    return "below" if value < low else ("within" if value <= high else "above")


def more_or_less(value: float, other: float) -> str:
    """'more' when value > other, else 'less'."""
    return "more" if value > other else "less"


def listing(items) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(item) for item in items]
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"
