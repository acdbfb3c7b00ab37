"""Progress bars on a terminal and in a log.

The jobs make their bars with ``tqdm.auto.tqdm``, looked up when they run, so a front end can put its own bar class
there (the web app does, see :mod:`retarget.app.jobs`). On a terminal the bars are tqdm's own. When standard error
is not a terminal (a log file, a pipe, a scheduler's job output), the command line puts :class:`LogBar` there
instead (:func:`bars_for`): tqdm's terminal bars would fill a log with carriage returns, cursor moves and a redraw
every tenth of a second.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.std import tqdm as std_tqdm

#: Seconds between two lines of one bar in a log (its first and last state are always written).
LOG_INTERVAL_S = 10.0

#: The bars a log shows: the frames of a scan, render or join, and the clips of a folder. Bars over a chunk's
#: batches or a batch's denoising steps would add a line or two per chunk and say nothing the frames do not.
LOG_UNITS = ("frame", "clip")

LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

_CURSOR_MOVE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineWriter:
    """A text stream for tqdm that passes on whole lines only: each status tqdm draws becomes one line, and its
    carriage returns, cursor moves and blank clearing writes are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in _CURSOR_MOVE.sub("", text).replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class LogBar(std_tqdm):
    """A tqdm bar that writes a log: one line per shown state (``desc: 40% 12/30 [elapsed<remaining, rate]``), at
    most every :data:`LOG_INTERVAL_S` seconds plus its first and last state, the last one also for a bar that a
    terminal would clear (``leave=False``); a state is written once (closing a bar whose last state was written
    writes nothing). Bars over other units than :data:`LOG_UNITS` are not shown. Same arguments as tqdm's;
    ``file`` defaults to the ``sys.stderr`` of the moment the bar is made."""

    def __init__(self, *args, **kwargs):
        self._written: tuple | None = None  # (n, total) of the last line written; set before tqdm draws the first
        if kwargs.get("unit", "it") not in LOG_UNITS:
            kwargs["disable"] = True
        kwargs["file"] = LineWriter(kwargs.get("file") or sys.stderr)
        kwargs["mininterval"] = LOG_INTERVAL_S
        kwargs["leave"] = True
        if _known_total(args, kwargs):  # else tqdm's own line without a percentage (``12frame [00:05, 2.3frame/s]``)
            kwargs.setdefault("bar_format", LOG_FORMAT)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        """tqdm's, but a status already written (same count and total) is not written again."""
        if msg is None:
            state = (self.n, self.total)
            if state == self._written:
                return True
            self._written = state
        return super().display(msg, pos)

    @classmethod
    def close_all(cls) -> None:
        """Close the bars still open (each writes its last state if it has not), e.g. before a job's final error
        or ``interrupted`` line, so that line stays the last one."""
        for bar in list(getattr(cls, "_instances", ())):
            if isinstance(bar, cls):
                bar.close()


def _known_total(args: tuple, kwargs: dict) -> bool:
    """Whether tqdm, given these arguments (``tqdm(iterable, desc, total, ...)``), will know the bar's total."""
    total = kwargs.get("total", args[2] if len(args) > 2 else None)
    if total is not None:
        return bool(total)
    iterable = kwargs.get("iterable", args[0] if args else None)
    try:
        return bool(len(iterable))
    except TypeError:  # None, or a generator
        return False


@contextmanager
def bars_for(stream) -> Iterator[None]:
    """Within the block, the jobs' bars are :class:`LogBar` when ``stream`` is not a terminal (tqdm's own on one)."""
    import tqdm.auto

    if _is_terminal(stream):
        yield
        return
    saved = tqdm.auto.tqdm
    tqdm.auto.tqdm = LogBar
    try:
        yield
    finally:
        tqdm.auto.tqdm = saved
        LogBar.close_all()  # a job that stopped leaves its bars open: their last lines come before the error's


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
