"""An exclusive lock on a work folder, so two processes never render into the same one.

The lock is ``fcntl.flock`` on ``FOLDER/.lock``, taken without waiting: a second process fails at once with one
:class:`~retarget.errors.InputError` line naming the holder's process id. The operating system drops the lock when
the holder exits, however it exits, so a crash never leaves a stale lock. Within one process the lock is shared
(counted): objects of the same process that open the same folder one after another do not lock each other out.
On systems without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from retarget.errors import InputError, OutputBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
_ATTEMPTS = 8

# (process id, folder) -> [file descriptor, holders]; the process id keeps a forked child from inheriting a lock
_held: dict[tuple[int, str], list[int]] = {}


class FolderLock:
    """Holds the lock of ``folder`` (created if needed) from construction until :meth:`release`.

    ``what``: the thing being protected, used at the start of the error message (e.g. the output path).
    Raises :class:`InputError` when another process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder = Path(folder)
        self._key = (os.getpid(), str(self.folder.resolve()))
        self._released = fcntl is None
        if fcntl is None:
            return
        entry = _held.get(self._key)
        if entry is not None:
            entry[1] += 1
            return
        _held[self._key] = [self._acquire(what), 1]

    def _acquire(self, what: str) -> int:
        path = self.folder / LOCK_NAME
        for _ in range(_ATTEMPTS):
            if self.folder.exists() and not self.folder.is_dir():
                raise InputError(f"{what}: {self.folder} is a file, where this output's work folder (its finished "
                                 "chunks, for a resume) goes; move or remove it")
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was removed by a holder that just finished: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                by = f" (process {holder})" if holder else ""
                raise OutputBusyError(f"{what}: another process{by} is rendering this output "
                                 f"(its work folder {self.folder} is locked)") from None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:  # not a file its previous holder removed after we opened it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)
        raise InputError(f"{what}: cannot lock the work folder {self.folder} (it keeps being removed)")

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Give up this hold; the last holder of the process removes the lock file, then the folder if that left
        it empty (a job that failed before its first chunk leaves nothing behind), and unlocks. Safe to call more
        than once."""
        if self._released:
            return
        self._released = True
        entry = _held.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[self._key]
        fd = entry[0]
        path = self.folder / LOCK_NAME
        try:
            try:
                ours = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                ours = False
            if ours:
                path.unlink(missing_ok=True)  # removed while still locked: see the inode check in _acquire
            try:
                self.folder.rmdir()
            except OSError:  # not empty (chunks to resume), gone, or a new lock file made in the meantime
                pass
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def _read_holder(fd: int) -> str:
    """The process id written in a lock file, or "" when it cannot be read."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
