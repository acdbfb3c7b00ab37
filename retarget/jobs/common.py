"""Small helpers the jobs share: output-path checks, time ranges, timing and audio arguments, motion preparation."""

from __future__ import annotations

import contextlib
import errno
import math
import os
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.motion.gaps import fill_gaps
from retarget.motion.smoothing import smooth
from retarget.motion.track import MotionTrack
from retarget.video.atomic import partial_path
from retarget.video.audio import AudioSource
from retarget.video.probe import VideoInfo
from retarget.video.reader import VideoReader
from retarget.video.timecode import offset_timecode

VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov")


def check_output(path, inputs=(), suffixes=VIDEO_OUTPUT_SUFFIXES) -> Path:
    """``path`` as a Path after checking it can be written: known suffix, existing folder, not one of ``inputs``,
    and a folder that takes new files (see :func:`check_writable_folder`). Called before any work, so that an
    output that cannot be written fails at once, with a line naming the user's path."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: output must end in {', '.join(suffixes)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path}: cannot write to {path.parent} (it is a file, not a folder)")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: output folder does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder")
    for item in inputs:
        if item is not None and Path(item).exists() and path.resolve() == Path(item).resolve():
            raise InputError(f"{path}: output would overwrite an input")
    check_writable_folder(path)
    return path


#: Plain reasons for the errors creating a file in a folder can give (others: the system's text).
_WRITE_REASONS = {
    getattr(errno, name): reason for name, reason in (
        ("EACCES", "permission denied"), ("EPERM", "permission denied"), ("EROFS", "read-only file system"),
        ("ENOSPC", "no space left on the device"), ("EDQUOT", "disk quota exceeded"),
        ("ENOENT", "it does not take new files"),  # the folder exists (checked first): /proc and the like
    ) if hasattr(errno, name)
}


def write_reason(error: OSError) -> str:
    """The plain reason of an error creating a file or folder in an existing folder (the system's text otherwise)."""
    return _WRITE_REASONS.get(error.errno) or (error.strerror or str(error)).lower()


def check_writable_folder(path) -> None:
    """Raise :class:`InputError` (``PATH: cannot write to FOLDER (reason)``) unless a new file can be created
    beside the output ``path`` (see :func:`write_problem`). Jobs write everything (temporary files, the work
    folder, the output) in that same folder."""
    path = Path(path)
    reason = write_problem(path)
    if reason is not None:
        folder = path.parent if str(path.parent) != "." else Path.cwd()
        raise InputError(f"{path}: cannot write to {folder} ({reason})")


def write_problem(path) -> str | None:
    """Why no new file can be created beside ``path`` in its (existing) folder, in plain words, or None when one
    can. The only reliable test (permissions say nothing for root, nor for read-only or special file systems) is to
    create one: a uniquely named empty file, named like the atomic writers' temporary files
    (``.NAME.partial-<random>.EXT``) so that one left by a killed process is recognisable, removed at once."""
    probe = partial_path(Path(path))
    try:
        handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None  # the folder takes files; a name clash with another writer is no reason to stop
    except OSError as error:
        return write_reason(error)
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def timing(info: VideoInfo, first: int = 0, stop: int | None = None) -> dict:
    """Keyword arguments for :class:`~retarget.video.resume.ChunkedRender` that keep the timestamps of the input's
    frames ``[first, stop)``: none for constant-rate input (frame k at k / rate), the real timestamps for
    variable-rate input."""
    if info.is_vfr:
        return {"time_base": info.time_base, "pts": info.frame_pts[first:stop]}
    return {}


def _check_range(start: float | None, end: float | None) -> None:
    for name, value in (("--start", start), ("--end", end)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{name} must be a finite number of seconds, got {value}")
    if start is not None and end is not None and end <= start:
        raise InputError(f"--end ({end}) must be after --start ({start})")
    if (start is not None and start < 0) or (end is not None and end < 0):
        raise InputError("--start and --end must be >= 0 seconds")


def _nonempty_range(path, lo: int, hi: int, start: float | None, end: float | None) -> tuple[int, int]:
    if lo >= hi:
        raise InputError(f"{path}: no frames between {start or 0} s and {f'{end} s' if end is not None else 'the end'}")
    return lo, hi


def clip_range(reader: VideoReader, start: float | None, end: float | None) -> tuple[int, int]:
    """Frame numbers ``[first, stop)`` of the frames with ``start <= t < end`` (seconds, ``None`` = open end);
    :class:`InputError` for an empty or reversed range."""
    _check_range(start, end)
    lo, hi = reader.frame_range(start, end)
    return _nonempty_range(reader.path, lo, hi, start, end)


def motion_range(track: MotionTrack, path, start: float | None, end: float | None) -> tuple[int, int]:
    """:func:`clip_range` for a motion file's ``track`` (its ``times``, seconds from its first frame)."""
    _check_range(start, end)
    tolerance = 1e-9  # the times are float seconds: a frame stored at 0.9999999999 s is the frame at 1 s
    lo = 0 if start is None else int(np.searchsorted(track.times, start - tolerance, side="left"))
    hi = len(track) if end is None else int(np.searchsorted(track.times, end - tolerance, side="left"))
    return _nonempty_range(path, lo, hi, start, end)


def audio_of_range(reader: VideoReader, first: int, stop: int) -> AudioSource:
    """The input's audio under its frames ``[first, stop)``: from frame ``first``'s time to frame ``stop``'s (the
    end of the file for the last frame)."""
    times = reader.info.frame_times()
    begin = None if first == 0 else float(times[first])
    end = None if stop >= len(times) else float(times[stop])
    return AudioSource(reader.path, start=begin, end=end)


def range_timecode(info: VideoInfo, first: int) -> str | None:
    """The SMPTE timecode of frame ``first`` of the clip (its start timecode moved on by that frame's time, in
    frames at the clip's rate), or None when the clip has no timecode."""
    if info.timecode is None:
        return None
    frames = round(float(info.frame_times()[first]) * info.frame_rate) if first else 0
    return offset_timecode(info.timecode, frames, info.frame_rate)


def prepared_motion(track: MotionTrack, method: str) -> MotionTrack:
    """``track`` smoothed with ``method`` and with every gap filled (interpolated inside, held at the ends)."""
    return fill_gaps(smooth(track, method), max_gap_seconds=float("inf"))


#: Default host-memory budget beyond the models, in GiB (``--memory-budget``): a chunk's frames, every copy a job
#: makes of them, and the per-frame working memory (see :func:`chunk_frames`).
MEMORY_BUDGET_GIB = 2.0

#: Per-frame working memory beyond a chunk's frames, in pictures of the clip's size (decoding with threads, face
#: detection, paste-back's float arithmetic over the face region, encoding): measured at 25 to 31 at 3840x2160
#: (``edit --side-by-side`` on CPU, peak RSS beyond the models minus the chunk's frames, 5- and 14-frame chunks);
#: reserved with a margin.
WORKING_PICTURES = 36


def picture_bytes(width: int, height: int) -> int:
    """Bytes of one uint8 RGB ``height x width`` picture."""
    return int(width) * int(height) * 3


def chunk_frames(frame_bytes: int, chunk_size: int, budget_gib: float, picture: int = 0, in_flight: int = 1,
                 reserved: int = 0) -> int:
    """Frames per chunk: as many as fit ``budget_gib`` GiB at ``frame_bytes`` bytes per frame (everything a chunk
    holds per frame at once, see :func:`edit_frame_bytes` and :func:`run_frame_bytes`) times ``in_flight`` chunks
    held at once (an overlapped job holds :data:`~retarget.jobs.stages.CHUNKS_IN_FLIGHT`: one being decoded, one
    rendered, one encoded), after reserving :data:`WORKING_PICTURES` pictures of ``picture`` bytes (the clip's,
    see :func:`picture_bytes`) for the work on single frames and ``reserved`` bytes (frames kept from the scan,
    see :func:`keep_scanned_frames`); at most ``chunk_size`` and at least 1 (a frame larger than the budget is
    still processed, alone). Depends only on its arguments, so a resumed job gets the same chunks."""
    budget = int(budget_gib * 1024**3) - WORKING_PICTURES * int(picture) - int(reserved)
    return max(1, min(int(chunk_size), budget // (max(1, int(frame_bytes)) * max(1, int(in_flight)))))


def keep_scanned_frames(count: int, width: int, height: int, budget_gib: float) -> bool:
    """Whether a job keeps the ``count`` frames its face scan decodes (``width`` x ``height``) for the render
    instead of decoding them again: when they take at most half of ``budget_gib`` GiB after the
    :data:`WORKING_PICTURES` reserve. The other half is left for the chunks in flight, which are then sized
    with the kept bytes reserved (see :func:`chunk_frames`); otherwise the render decodes each chunk again, on
    the prefetch thread of :mod:`retarget.jobs.stages`, while the previous chunk renders. Depends only on its
    arguments (the clip and the budget), so a resumed job decides the same."""
    picture = picture_bytes(width, height)
    free = int(budget_gib * 1024**3) - WORKING_PICTURES * picture
    return int(count) * picture <= free // 2


def edit_frame_bytes(width: int, height: int, face_size: int, side_by_side: bool) -> int:
    """Host bytes per frame of an ``edit`` chunk: the decoded frame (pasted into in place); with ``side_by_side``
    also the original kept for the left panel and the composite twice as wide; plus the aligned crop and the
    generated face (``face_size`` squared each)."""
    pictures = 4 if side_by_side else 1
    return pictures * picture_bytes(width, height) + 2 * picture_bytes(face_size, face_size)


def run_frame_bytes(width: int, height: int, face_size: int, side_by_side: bool,
                    result_size: tuple[int, int] | None = None, panel_rows: int | None = None) -> int:
    """Host bytes per frame of a ``run`` chunk: the generated face (``face_size`` squared); with ``result_size``
    (``(width, height)`` of the pasted photo, ``paste_back``) also the frame it is pasted into; with
    ``side_by_side`` also the decoded driving frame (``width x height``) and the composite (the driving frame and
    the result scaled to ``panel_rows``, default ``face_size``)."""
    face = picture_bytes(face_size, face_size)
    result_width, result_height = result_size or (face_size, face_size)
    total = face + (0 if result_size is None else picture_bytes(result_width, result_height))
    if not side_by_side:
        return total
    rows = panel_rows or face_size
    panels = picture_bytes(round(width * rows / height), rows) \
        + picture_bytes(round(result_width * rows / result_height), rows)
    return total + picture_bytes(width, height) + panels

