"""A clip job cut in two phases: the face scan, then the render.

``run`` and ``edit`` (see :mod:`retarget.jobs.run`, :mod:`retarget.jobs.edit`) first scan the clip (decode,
detect, follow the face, read its expressions with SMIRK, its identity with ArcFace), then render it on the
diffusion model and encode the output. A one-clip command does both at once; ``batch`` scans the next clip on a
worker thread while this one renders (see :mod:`retarget.jobs.batch`), so on a GPU the device is not idle during
every clip's scan. The split is the same code either way: a job's scan phase returns a :class:`ScannedClip`, and
its :meth:`~ScannedClip.render` does the rest.

Imports run one way: ``run`` and ``edit`` use this module; it uses neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from retarget.video.resume import output_lock


class ScannedClip:
    """A clip whose face scan is done: :meth:`render` renders, encodes and returns the output path.

    It holds the output's work-folder lock (see :func:`~retarget.video.resume.output_lock`) from before the scan
    until :meth:`render` returns or raises, or :meth:`release` is called (a scanned clip that will not be rendered,
    e.g. after a stop), so no second process writes the same output in between.
    """

    def __init__(self, output: Path, lock, render: Callable[[], Path]):
        self.output = output
        self._lock = lock
        self._render = render

    @classmethod
    def scan(cls, output: Path, scan: Callable[[], Callable[[], Path]]) -> "ScannedClip":
        """Lock ``output``'s work folder, then run ``scan`` (the job's scan phase, returning its render phase);
        the lock is released again when ``scan`` raises."""
        lock = output_lock(output)
        try:
            render = scan()
        except BaseException:
            lock.release()
            raise
        return cls(output, lock, render)

    def render(self) -> Path:
        """Render and encode the clip (once); returns the output path. Releases the lock either way."""
        try:
            return self._render()
        finally:
            self.release()

    def release(self) -> None:
        """Give up the output's lock without rendering (safe to call more than once)."""
        self._lock.release()


def scan_check(session, check: Callable[[], None] | None = None) -> Callable[[], None]:
    """The function a job's face scan calls between its chunks: ``session``'s load check (see
    :meth:`~retarget.jobs.session.RenderSession.check_loading`), then ``check`` when given."""
    if check is None:
        return session.check_loading

    def both() -> None:
        session.check_loading()
        check()

    return both
