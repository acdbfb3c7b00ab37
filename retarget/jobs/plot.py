"""``retarget plot``: a motion file's raw and smoothed curves to a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retarget.errors import InputError
from retarget.jobs.common import check_output
from retarget.motion.motion_file import load_motion
from retarget.motion.plot import DEFAULT_CHANNELS, plot_curves
from retarget.motion.smoothing import smooth
from retarget.motion.track import channel_index


def plot_job(motion, output, smooth_method: str = "kalman", channels: Sequence[str] | None = None) -> Path:
    """Plot ``channels`` (names like ``exp00``, ``eyelid0``, ``jaw0`` or numbers 0-54; default
    :data:`~retarget.motion.plot.DEFAULT_CHANNELS`) of ``motion``, raw and smoothed with ``smooth_method``."""
    output = check_output(output, inputs=(motion,), suffixes=(".png",))
    track = load_motion(motion)
    if len(track) == 0:
        raise InputError(f"{motion}: the motion file has no frames")
    chosen = [c.strip() for c in channels if c.strip()] if channels else list(DEFAULT_CHANNELS)
    parsed = []
    for channel in chosen:
        try:
            parsed.append(int(channel) if channel.isdigit() else channel)
            channel_index(parsed[-1])
        except (ValueError, KeyError, IndexError) as error:
            raise InputError(f"unknown channel {channel!r} (use names like exp00, eyelid0, jaw0 or 0-54)") from error
    smoothed = None if smooth_method == "none" else smooth(track, smooth_method)
    return plot_curves(track, output, smoothed, channels=parsed)
