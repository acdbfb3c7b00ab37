"""User-facing errors.

Anything the user can fix (a missing file, a wrong shape, a photo without a face) is raised as
:class:`RetargetError`. The command line prints its message as one line on stderr and exits non-zero;
a traceback is shown only with ``--debug``.
"""


class RetargetError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class WeightsError(RetargetError):
    """A weights file is missing, unreadable, or does not match the expected layout or shapes."""


class InputError(RetargetError):
    """An input file (video, image, motion file) is missing, unreadable or unusable."""


class NoFaceError(InputError):
    """No usable face was found where one is required (for example in an identity photo)."""
