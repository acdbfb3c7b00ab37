"""User-facing errors.

Anything the user can fix (a missing file, a wrong shape, a photo without a face) is raised as
:class:`RetargetError`. The command line prints its message as one line on stderr and exits non-zero;
a traceback is shown only with ``--debug``.
"""

from pathlib import Path


class RetargetError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class WeightsError(RetargetError):
    """A weights file is missing, unreadable, or does not match the expected layout or shapes."""


class InputError(RetargetError):
    """An input file (video, image, motion file) is missing, unreadable or unusable."""


class OutputBusyError(InputError):
    """Another process is writing this output (its work folder is locked): a second job of it stops at once."""


class NoFaceError(InputError):
    """No usable face was found where one is required (for example in an identity photo)."""


def require_file(path, kind: str = "a file"):
    """``path`` as a :class:`~pathlib.Path` if it names a regular file (or a link to one); else one-line
    :class:`InputError`: ``PATH: no such file``, ``PATH: is a folder, not KIND`` or ``PATH: is a special file
    (device, pipe or socket), not KIND``. ``kind`` names what was expected, e.g. ``"a video file"``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not {kind}")
    if not path.is_file():
        raise InputError(f"{path}: is a special file (device, pipe or socket), not {kind}")
    return path
