"""Atomic file output: write to a temporary file beside the target, rename only when complete.

A reader of the target path sees either nothing (or the previous version) or the complete new file, never a
half-written one; if the writing code raises, the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path


def partial_path(target: str | os.PathLike) -> Path:
    """A unique temporary path in the target's folder that keeps the target's extension.

    The extension is kept so that formats chosen by file name (``.mp4``, ``.npz``) stay the same. The name starts
    with a dot and contains ``.partial-`` so that stray files from a killed process are recognisable.
    """
    target = Path(target)
    return target.with_name(f".{target.stem}.partial-{uuid.uuid4().hex[:12]}{target.suffix}")


def partial_target(path: str | os.PathLike) -> Path | None:
    """The target whose temporary file ``path`` is (the inverse of :func:`partial_path`), or None when ``path``
    is not named like one; so that an error while writing can name the user's file."""
    path = Path(path)
    match = re.fullmatch(r"\.(.+)\.partial-[0-9a-f]{12}(\.[^.]+)?", path.name)
    return path.with_name(match.group(1) + (match.group(2) or "")) if match else None


def discard_partials(target: str | os.PathLike) -> int:
    """Remove the temporary files of ``target`` (named by :func:`partial_path`) that a killed writer left beside it;
    the number removed. Only for a caller that alone writes ``target`` (a job holding its output's lock)."""
    target = Path(target)
    removed = 0
    for path in target.parent.glob(f".{glob.escape(target.stem)}.partial-*"):
        if partial_target(path) == target and path.is_file():
            discard(path)
            removed += 1
    return removed


def discard(path: str | os.PathLike) -> None:
    """Remove ``path`` if it exists; never raises for a missing file."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def commit(temporary: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Flush ``temporary`` to disk and atomically rename it to ``target`` (same folder, so same file system)."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return Path(target)


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on normal exit it replaces ``target``, on an exception it is deleted.

    The parent folder of ``target`` must exist.
    """
    target = Path(target)
    temporary = partial_path(target)
    try:
        yield temporary
    except BaseException:
        discard(temporary)
        raise
    try:
        commit(temporary, target)
    except BaseException:
        discard(temporary)
        raise
