"""Filling frames without a face: linear interpolation inside a gap, the nearest valid frame at the ends.

A gap (a run of invalid frames) is filled only when it spans at most ``max_gap_seconds``; longer gaps stay
invalid (the face really is gone, so the renderer passes those frames through untouched).
"""

from __future__ import annotations

import numpy as np

from retarget.motion.track import MotionTrack


def invalid_runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges of consecutive False entries of ``valid`` (bool ``[N]``)."""
    padded = np.concatenate([[True], np.asarray(valid, dtype=bool), [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def fill_gaps(track: MotionTrack, max_gap_seconds: float = 0.5) -> MotionTrack:
    """``track`` with short gaps filled and marked valid.

    Interior gaps: values interpolated linearly in time between the valid frames on both sides. Leading and
    trailing gaps: the first/last valid frame held. A gap is filled when its duration (number of frames / rate)
    is at most ``max_gap_seconds``; ``float('inf')`` fills everything. A track without any valid frame is
    returned unchanged.
    """
    valid = track.valid
    if valid.all() or not valid.any():
        return track
    limit = max_gap_seconds * float(track.rate) + 1e-9
    values = track.values.copy()
    filled = valid.copy()
    n = len(track)
    for start, stop in invalid_runs(valid):
        if stop - start > limit:
            continue
        if start == 0:
            values[start:stop] = track.values[stop]
        elif stop == n:
            values[start:stop] = track.values[start - 1]
        else:
            t0, t1 = track.times[start - 1], track.times[stop]
            w = ((track.times[start:stop] - t0) / (t1 - t0))[:, None]
            values[start:stop] = (1.0 - w) * track.values[start - 1] + w * track.values[stop]
        filled[start:stop] = True
    return track.with_values(values, filled)
