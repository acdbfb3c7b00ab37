"""The motion track: one 55-d FLAME expression vector per video frame, with validity and timestamps.

Layout of the 55 values (SMIRK's published order): ``[0:50]`` expression coefficients, ``[50:52]`` eyelid
closure (0 = open, 1 = closed), ``[52:55]`` jaw pose (``[52]`` opening >= 0, ``[53:55]`` sideways in [-0.2, 0.2]).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

DIM = 55
EXPRESSION = slice(0, 50)
EYELID = slice(50, 52)
JAW = slice(52, 55)
PARTS = {"expression": EXPRESSION, "eyelid": EYELID, "jaw": JAW}

#: Per-value [low, high] of the published ranges (eyelid [0, 1]; jaw[0] >= 0; jaw[1:3] in [-0.2, 0.2]).
LOWER = np.full(DIM, -np.inf, dtype=np.float32)
UPPER = np.full(DIM, np.inf, dtype=np.float32)
LOWER[EYELID], UPPER[EYELID] = 0.0, 1.0
LOWER[52] = 0.0
LOWER[53:55], UPPER[53:55] = -0.2, 0.2


def channel_names() -> list[str]:
    """Names of the 55 values: ``exp00``..``exp49``, ``eyelid0``, ``eyelid1``, ``jaw0``..``jaw2``."""
    return [f"exp{i:02d}" for i in range(50)] + ["eyelid0", "eyelid1", "jaw0", "jaw1", "jaw2"]


def channel_index(name: str | int) -> int:
    """Index of a channel given by name (see :func:`channel_names`) or by number 0..54."""
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()):
        index = int(name)
        if not 0 <= index < DIM:
            raise ValueError(f"channel {index} is outside 0..{DIM - 1}")
        return index
    names = channel_names()
    if name not in names:
        raise ValueError(f"unknown channel {name!r}; use exp00..exp49, eyelid0/1, jaw0..jaw2 or 0..54")
    return names.index(name)


def clamp_published(values: np.ndarray) -> np.ndarray:
    """``values`` (``[..., 55]``) clipped to the published ranges, as float32."""
    return np.clip(np.asarray(values, dtype=np.float32), LOWER, UPPER)


@dataclass(frozen=True)
class MotionTrack:
    """Per-frame expression values of a clip.

    ``values``: float32 ``[N, 55]``. ``valid``: bool ``[N]``, False where no face was found (values there are
    meaningless). ``times``: float64 ``[N]`` seconds from the clip's first frame, strictly increasing.
    ``rate``: the clip's frame rate, exact. ``metadata``: free-form strings (no pictures). ``filled``: bool
    ``[N]`` or None: frames that are not ``valid`` because the detector missed the face, but whose values were read
    on the face where a short gap was bridged (keypoints interpolated between detections, see
    :attr:`retarget.jobs.frames.ClipScan.filled`); a ``run`` driven by the track takes them as valid, as one driven
    by its clip does. ``cuts``: bool ``[N]`` or None: frames that start a new shot (see :mod:`retarget.video.shots`);
    smoothing does not cross them.
    """

    values: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    rate: Fraction
    metadata: dict[str, str] = field(default_factory=dict)
    filled: np.ndarray | None = None
    cuts: np.ndarray | None = None

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float32)
        valid = np.asarray(self.valid, dtype=bool)
        times = np.asarray(self.times, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != DIM:
            raise ValueError(f"motion values must be [N, {DIM}], got {values.shape}")
        n = values.shape[0]
        if valid.shape != (n,) or times.shape != (n,):
            raise ValueError(f"valid and times must be [{n}], got {valid.shape} and {times.shape}")
        if n > 1 and not np.all(np.diff(times) > 0):
            raise ValueError("motion timestamps must be strictly increasing")
        rate = Fraction(self.rate)
        if rate <= 0:
            raise ValueError(f"frame rate must be positive, got {rate}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "valid", valid)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in self.metadata.items()})
        if self.filled is not None:
            filled = np.asarray(self.filled, dtype=bool)
            if filled.shape != (n,):
                raise ValueError(f"filled must be [{n}], got {filled.shape}")
            object.__setattr__(self, "filled", filled)
        if self.cuts is not None:
            cuts = np.asarray(self.cuts, dtype=bool)
            if cuts.shape != (n,):
                raise ValueError(f"cuts must be [{n}], got {cuts.shape}")
            object.__setattr__(self, "cuts", cuts)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def shots(self) -> list[tuple[int, int]]:
        """``[start, stop)`` frame ranges of the shots, in order (see :func:`~retarget.video.shots.shot_ranges`)."""
        from retarget.video.shots import shot_ranges

        return shot_ranges(self.cuts, len(self))

    @classmethod
    def constant_rate(cls, values: np.ndarray, valid: np.ndarray | None, rate: Fraction | int, **kw) -> MotionTrack:
        """A track whose frame k is at ``k / rate`` seconds (all frames valid when ``valid`` is None)."""
        values = np.asarray(values, dtype=np.float32)
        n = values.shape[0]
        rate = Fraction(rate)
        times = np.arange(n, dtype=np.float64) * (rate.denominator / rate.numerator)
        return cls(values, np.ones(n, bool) if valid is None else valid, times, rate, **kw)

    def with_bridged_gaps(self) -> MotionTrack:
        """This track with its ``filled`` frames valid (their values were read on the face), as a scan of the clip
        gives it; the track itself when it has none recorded."""
        if self.filled is None:
            return self
        return replace(self, valid=self.valid | self.filled, filled=None)

    def with_values(self, values: np.ndarray, valid: np.ndarray | None = None) -> MotionTrack:
        """A copy with new ``values`` (and optionally ``valid``), same times and rate."""
        return replace(self, values=values, valid=self.valid if valid is None else valid)
