"""Plotting raw and smoothed expression curves to a PNG (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from retarget.motion.track import MotionTrack, channel_index, channel_names
from retarget.video.atomic import atomic_output

#: Channels drawn by default: the three strongest expression components, one eyelid, the jaw opening.
DEFAULT_CHANNELS = ("exp00", "exp01", "exp02", "eyelid0", "jaw0")


def plot_curves(
    raw: MotionTrack,
    output: str | os.PathLike,
    smoothed: MotionTrack | None = None,
    channels: Sequence[str | int] = DEFAULT_CHANNELS,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Draw one panel per channel (x: seconds) with the raw curve, the smoothed one if given, and shaded spans
    where frames are invalid, under ``title`` if given; write a PNG to ``output`` atomically. Channels by name or
    index (see :func:`retarget.motion.track.channel_names`)."""
    figure = curves_figure(raw, smoothed, channels, dpi, title=title)
    output = Path(output)
    with atomic_output(output) as temporary:
        figure.savefig(temporary, format="png")
    return output


def curves_figure(
    raw: MotionTrack,
    smoothed: MotionTrack | None = None,
    channels: Sequence[str | int] = DEFAULT_CHANNELS,
    dpi: int = 100,
    labels: tuple[str, str] = ("raw", "smoothed"),
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_curves` (an Agg ``Figure``): ``raw`` drawn thin and grey, ``smoothed`` (any
    second track of the same frames) thick, named by ``labels``; shaded where ``raw`` is invalid; a dashed
    vertical line at each cut of ``raw`` (a frame that starts a new shot)."""
    indices = [channel_index(c) for c in channels]
    if not indices:
        raise ValueError("no channels to plot")
    if smoothed is not None and len(smoothed) != len(raw):
        raise ValueError("raw and smoothed tracks must have the same frames")
    names = channel_names()
    figure = Figure(figsize=(10, 1.8 * len(indices) + 0.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(indices), 1, sharex=True, squeeze=False)[:, 0]
    times = raw.times
    invalid = ~raw.valid
    for ax, index in zip(axes, indices):
        ax.plot(times, np.where(raw.valid, raw.values[:, index], np.nan), lw=0.8, color="0.55", label=labels[0])
        if smoothed is not None:
            ax.plot(times, np.where(smoothed.valid, smoothed.values[:, index], np.nan), lw=1.4, color="C0",
                    label=labels[1])
        if invalid.any():
            ax.fill_between(times, 0, 1, where=invalid, transform=ax.get_xaxis_transform(), color="C3",
                            alpha=0.15, step="mid", label="no face")
        for number, cut in enumerate(times[raw.cuts] if raw.cuts is not None else ()):
            ax.axvline(cut, color="0.3", lw=0.8, ls="--", label="cut" if number == 0 else None)
        ax.set_ylabel(names[index])
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small", ncols=3)
    axes[-1].set_xlabel("time (s)")
    if title:
        axes[0].set_title(title, fontsize="medium", loc="left")
    figure.tight_layout()
    return figure
