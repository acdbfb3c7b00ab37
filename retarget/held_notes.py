"""Notes on standard error that wait for the job's first output.

At the start of a job, once the face models have loaded, stderr names them (``retarget.faces.detection: face
detector: ...``). A job can still stop right after that on bad input that only the face models can see (an
identity photo without a face), and its error should then be the only line on stderr. So the command line holds
those notes (:class:`HeldNotes`, a logging handler) and writes them, in order, just before the first other thing
written to stderr: a progress bar, a warning, any other log record (:class:`ReleasingStream` stands in for
``sys.stderr``); a job that stops before any such output drops them.
"""

from __future__ import annotations

import logging
import threading

#: Loggers whose INFO records are held (their warnings and errors are not).
HELD_LOGGERS = ("retarget.faces",)


class HeldNotes(logging.Handler):
    """A handler in front of ``target`` that holds the INFO (and lower) records of :data:`HELD_LOGGERS` until
    :meth:`publish` (then writes them first, in order) or :meth:`drop`; every other record releases them first and
    then goes to ``target``. Thread-safe."""

    def __init__(self, target: logging.Handler):
        super().__init__()
        self.target = target
        self._held: list[logging.LogRecord] = []
        self._holding = True
        self._guard = threading.RLock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            if self._holding and record.levelno <= logging.INFO and record.name.startswith(HELD_LOGGERS):
                self._held.append(record)
                return
        self.publish()
        self.target.handle(record)

    def publish(self) -> None:
        """Write the held records and stop holding (no-op once published or dropped). (Not ``release``: that is
        :class:`logging.Handler`'s lock.)"""
        with self._guard:
            records, self._held, self._holding = self._held, [], False
            for record in records:
                self.target.handle(record)

    def drop(self) -> None:
        """Forget the held records and stop holding."""
        with self._guard:
            self._held, self._holding = [], False


class ReleasingStream:
    """``stream`` (standard error) whose writes first :meth:`~HeldNotes.publish` ``notes``; everything else (e.g.
    ``isatty``, ``fileno``, ``encoding``) is the stream's."""

    def __init__(self, stream, notes: HeldNotes):
        self.stream = stream
        self.notes = notes

    def write(self, text: str) -> int:
        if text:
            self.notes.publish()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)
