"""Progress bars that are live while a cell runs and read as finished in the saved notebook.

In a Jupyter kernel the bar is tqdm's widget. Its text form (what GitHub, nbviewer and nbconvert
show, since they cannot draw widgets) is not tqdm's live text, which would be saved at "0%": it is
the finished state, "measuring: 100%|██████████| 5/5". At close the display is updated with the
state actually reached, so a bar that stopped early is saved as stopped. nbval compares the text
first displayed, not updates, so the two agree exactly when the work ran to the end; the text holds
no elapsed time or rate, and needs no sanitizing. Outside a kernel the bar is tqdm's text on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt}"  # tqdm's layout without elapsed time and rate
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def meter(desc: str, n: int, total: int) -> str:
    """The text of a bar: 'measuring: 100%|██████████| 5/5'."""
    from tqdm import tqdm

    return tqdm.format_meter(n, total, 0, prefix=desc, bar_format=BAR_FORMAT)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class Progress:
    """A bar over `total` steps: iterate over it, or use it as a context manager and call update()."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str, total: int | None = None):
        if total is None:
            if iterable is None or not hasattr(iterable, "__len__"):
                raise TypeError("progress() needs total= when the iterable has no len(): the saved text names it")
            total = len(iterable)
        self.iterable, self.desc, self.total, self.n = iterable, desc, total, 0
        self._closed = False
        self._handle = None
        if _in_kernel():
            self._bar = self._widget()
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc)

    def _widget(self) -> Any:
        from IPython.display import display
        from tqdm.notebook import tqdm

        bar = tqdm(total=self.total, desc=self.desc, display=False)
        self._handle = display(self._bundle(bar, meter(self.desc, self.total, self.total)), raw=True,
                               display_id=True)
        return bar

    @staticmethod
    def _bundle(bar, text: str) -> dict:
        view = bar.container._repr_mimebundle_().get(WIDGET_VIEW)
        return {WIDGET_VIEW: view, "text/plain": text} if view else {"text/plain": text}

    def update(self, n: int = 1) -> None:
        """Count n more steps done."""
        self.n += n
        self._bar.update(n)

    def close(self) -> None:
        """Finish the bar; in a notebook, save the state it reached as its text."""
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._handle is not None:
            self._handle.update(self._bundle(self._bar, meter(self.desc, self.n, self.total)), raw=True)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("nothing to iterate over: use progress(..., total=n) as a context manager")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None) -> Progress:
    """`for x in progress(items, desc="measuring")`, or `with progress(desc=..., total=n) as bar: ... bar.update()`."""
    return Progress(iterable, desc=desc, total=total)
