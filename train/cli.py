"""Running a training command: logging setup and the one-line error contract of the ``main`` functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from retarget.errors import RetargetError


def run_command(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], object],
                argv: list[str] | None) -> int:
    """Parse ``argv``, run ``command(args)`` and return the exit status.

    A :class:`RetargetError` (something the user can fix) is printed as one line on stderr with status 2; with
    ``--debug`` it propagates with its traceback instead.
    """
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        command(args)
    except RetargetError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
