"""``retarget plot``: a motion file's raw and smoothed curves to a PNG (the smoothed ones as ``run`` renders them:
every gap filled, clamped to the published ranges)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retarget.errors import InputError
from retarget.jobs.common import check_output, prepared_motion
from retarget.motion.motion_file import load_motion
from retarget.motion.plot import DEFAULT_CHANNELS, plot_curves
from retarget.motion.track import channel_index, clamp_published


def plot_job(motion, output, smooth_method: str = "kalman", channels: Sequence[str] | None = None) -> Path:
    """Plot ``channels`` (names like ``exp00``, ``eyelid0``, ``jaw0`` or numbers 0-54; default
    :data:`~retarget.motion.plot.DEFAULT_CHANNELS`) of ``motion``, raw and smoothed with ``smooth_method`` as
    ``run`` renders them (:func:`~retarget.jobs.common.prepared_motion`: every gap filled; then clamped to the
    published ranges, as every render clamps them: a smoother's overshoot, say the jaw below 0, is not drawn as if
    it were rendered). The title names the file and the smoothing."""
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
    smoothed = None
    if smooth_method != "none":
        smoothed = prepared_motion(track, smooth_method)
        smoothed = smoothed.with_values(clamp_published(smoothed.values))
    title = f"{Path(motion).name}: raw" + (f" and smoothed ({smooth_method}, as rendered)" if smoothed else "")
    return plot_curves(track, output, smoothed, channels=parsed, title=title)
