"""SMPTE timecodes: a clip's start timecode, moved by a number of frames.

A timecode is ``HH:MM:SS:FF`` (non-drop-frame) or ``HH:MM:SS;FF`` (drop-frame, also written with ``.`` or ``,``
before the frames). Frames are counted at the nominal rate, the clip's frame rate rounded (30 for 30000/1001).
Drop-frame timecode, for 29.97 and 59.94 fps, skips the frame numbers 0 and 1 (0 to 3 at 59.94) at the start of
every minute except every tenth, so that the timecode keeps to the clock; it is only defined for nominal rates
that are multiples of 30. Timecodes wrap at 24 hours.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TIMECODE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


def nominal_rate(rate: Fraction) -> int:
    """Frames per second a timecode counts at ``rate``: the rate rounded, at least 1 (30 for 30000/1001)."""
    return max(1, round(Fraction(rate)))


def _drop_per_minute(timecode_rate: int, drop: bool) -> int:
    return timecode_rate // 30 * 2 if drop else 0


def timecode_frames(timecode: str, rate: Fraction) -> tuple[int, bool]:
    """``(frame number from 00:00:00:00, drop_frame)`` of ``timecode`` at ``rate``; ``ValueError`` for text
    that is not a timecode of that rate (a field out of range, drop-frame at a rate that has none)."""
    match = _TIMECODE.match(timecode.strip())
    if match is None:
        raise ValueError(f"not a timecode: {timecode!r}")
    hours, minutes, seconds, separator, frames = match.groups()
    hours, minutes, seconds, frames = int(hours), int(minutes), int(seconds), int(frames)
    fps = nominal_rate(rate)
    drop = separator != ":"
    if drop and fps % 30:
        raise ValueError(f"drop-frame timecode {timecode!r} at {fps} fps (only 30 and its multiples drop frames)")
    if hours >= 24 or minutes >= 60 or seconds >= 60 or frames >= fps:
        raise ValueError(f"timecode {timecode!r} out of range at {fps} fps")
    skipped = _drop_per_minute(fps, drop)
    if skipped and seconds == 0 and minutes % 10 and frames < skipped:
        raise ValueError(f"drop-frame timecode {timecode!r} names a skipped frame")
    total_minutes = 60 * hours + minutes
    count = (3600 * hours + 60 * minutes + seconds) * fps + frames
    return count - skipped * (total_minutes - total_minutes // 10), drop


def format_timecode(frame_number: int, rate: Fraction, drop: bool = False) -> str:
    """The timecode of ``frame_number`` (from 00:00:00:00, wrapped at 24 hours) at ``rate``."""
    fps = nominal_rate(rate)
    skipped = _drop_per_minute(fps, drop)
    per_day = 24 * 3600 * fps - skipped * (24 * 60 - 24 * 6)
    number = frame_number % per_day
    if skipped:
        per_ten_minutes = 600 * fps - 9 * skipped
        per_minute = 60 * fps - skipped
        tens, rest = divmod(number, per_ten_minutes)
        number += 9 * skipped * tens + (skipped * ((rest - skipped) // per_minute) if rest > skipped else 0)
    frames = number % fps
    seconds = number // fps % 60
    minutes = number // (60 * fps) % 60
    hours = number // (3600 * fps)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{';' if skipped else ':'}{frames:02d}"


def offset_timecode(timecode: str, frames: int, rate: Fraction) -> str:
    """``timecode`` moved on by ``frames`` frames at ``rate``, in the same style (drop-frame or not)."""
    number, drop = timecode_frames(timecode, rate)
    return format_timecode(number + frames, rate, drop)
