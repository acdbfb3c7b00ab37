"""Small helpers the jobs share: output-path checks, job keys, timing arguments, motion preparation."""

from __future__ import annotations

from pathlib import Path

from retarget.errors import InputError
from retarget.motion.gaps import fill_gaps
from retarget.motion.smoothing import smooth
from retarget.motion.track import MotionTrack
from retarget.video.probe import VideoInfo

VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov")


def check_output(path, inputs=(), suffixes=VIDEO_OUTPUT_SUFFIXES) -> Path:
    """``path`` as a Path after checking it can be written: known suffix, existing folder, not one of ``inputs``."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: output must end in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: output folder does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder")
    for item in inputs:
        if item is not None and Path(item).exists() and path.resolve() == Path(item).resolve():
            raise InputError(f"{path}: output would overwrite an input")
    return path


def timing(info: VideoInfo) -> dict:
    """Keyword arguments for :class:`~retarget.video.resume.ChunkedRender` that keep the input's timestamps:
    none for constant-rate input (frame k at k / rate), the real timestamps for variable-rate input."""
    if info.is_vfr:
        return {"time_base": info.time_base, "pts": info.frame_pts}
    return {}


def prepared_motion(track: MotionTrack, method: str) -> MotionTrack:
    """``track`` smoothed with ``method`` and with every gap filled (interpolated inside, held at the ends)."""
    return fill_gaps(smooth(track, method), max_gap_seconds=float("inf"))
