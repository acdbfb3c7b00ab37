"""Motion tracks: per-frame 55-d FLAME expression values, their file format, smoothing, gap filling,
resampling across frame rates, relative mode, per-part gains, and curve plots."""

from retarget.motion.adjust import PartGains, apply_gains, expression_energy, neutral_frame, relative_motion
from retarget.motion.gaps import fill_gaps, invalid_runs
from retarget.motion.motion_file import FORMAT, VERSION, load_motion, save_motion
from retarget.motion.plot import DEFAULT_CHANNELS, plot_curves
from retarget.motion.resample import resample
from retarget.motion.smoothing import kalman_rts, one_euro, savitzky_golay, smooth
from retarget.motion.track import (
    DIM,
    EXPRESSION,
    EYELID,
    JAW,
    PARTS,
    MotionTrack,
    channel_index,
    channel_names,
    clamp_published,
)

__all__ = [
    "DEFAULT_CHANNELS", "DIM", "EXPRESSION", "EYELID", "FORMAT", "JAW", "PARTS", "VERSION", "MotionTrack",
    "PartGains", "apply_gains", "channel_index", "channel_names", "clamp_published", "expression_energy",
    "fill_gaps", "invalid_runs", "kalman_rts", "load_motion", "neutral_frame", "one_euro", "plot_curves",
    "relative_motion", "resample", "save_motion", "savitzky_golay", "smooth",
]
