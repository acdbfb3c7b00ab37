"""Aligning a track to another clip's timestamps (driving and target clips at different frame rates).

Frames are matched by time: output frame i gets the track's value at ``times[i]`` (seconds from the first
frame), by linear interpolation between the two neighbouring frames or from the nearest frame.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np

from retarget.motion.track import MotionTrack


def resample(
    track: MotionTrack,
    times: np.ndarray,
    rate: Fraction | int,
    method: Literal["linear", "nearest"] = "linear",
) -> MotionTrack:
    """``track`` evaluated at ``times`` (float64 ``[M]`` seconds, increasing), as a track with frame ``rate``.

    ``linear``: interpolated between the frames around each time; valid only where both are valid (or the time
    falls exactly on a valid frame). ``nearest``: the closest frame's value and validity. Times more than half a
    source frame before the first frame, and times from the end of the last frame on (its time plus one source
    frame: a frame shows until the next one), are invalid (their values hold the end frames).
    """
    times = np.asarray(times, dtype=np.float64)
    n = len(track)
    if n == 0:
        raise ValueError("cannot resample an empty track")
    src = track.times
    frame = 1.0 / float(track.rate)
    inside = (times >= src[0] - 0.5 * frame - 1e-9) & (times < src[-1] + frame - 1e-9)
    if method == "nearest":
        right = np.clip(np.searchsorted(src, times), 0, n - 1)
        left = np.clip(right - 1, 0, n - 1)
        pick = np.where(np.abs(times - src[left]) <= np.abs(src[right] - times), left, right)
        values = track.values[pick]
        valid = track.valid[pick] & inside
    elif method == "linear":
        right = np.clip(np.searchsorted(src, times, side="right"), 1, n - 1) if n > 1 else np.zeros(len(times), int)
        left = np.maximum(right - 1, 0)
        span = src[right] - src[left]
        w = np.where(span > 0, (times - src[left]) / np.where(span > 0, span, 1.0), 0.0)
        w = np.clip(w, 0.0, 1.0)
        values = (1.0 - w)[:, None] * track.values[left] + w[:, None] * track.values[right]
        on_left = w <= 1e-9
        on_right = w >= 1 - 1e-9
        valid = np.where(
            on_left, track.valid[left], np.where(on_right, track.valid[right], track.valid[left] & track.valid[right])
        )
        valid = valid & inside
    else:
        raise ValueError(f"unknown resampling method {method!r}; use 'linear' or 'nearest'")
    return MotionTrack(values.astype(np.float32), valid, times, Fraction(rate), dict(track.metadata))
