"""Relative motion and per-part gains, with the published value ranges enforced afterwards.

Relative mode transfers the actor's *changes* of expression rather than their absolute face: the driving
clip's neutral frame is subtracted and the target's own expression added,
``out = target + gains * (driving - driving[neutral])``. Absolute mode with gains is ``out = gains * driving``.
Both clamp to the published ranges (eyelid [0, 1], jaw[0] >= 0, jaw[1:3] in [-0.2, 0.2]).

A neutral frame that cannot be used (out of range, without a face, or a track with no face at all) raises
:class:`NeutralFrameError`: an :class:`~retarget.errors.InputError` (one line on the command line) that is also a
``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from retarget.errors import InputError
from retarget.motion.track import DIM, EXPRESSION, EYELID, JAW, MotionTrack, clamp_published


@dataclass(frozen=True)
class PartGains:
    """Multipliers for the expression (50), eyelid (2) and jaw (3) values; 1.0 leaves them unchanged."""

    expression: float = 1.0
    eyelid: float = 1.0
    jaw: float = 1.0

    def vector(self) -> np.ndarray:
        """float32 ``[55]`` of per-value gains."""
        gains = np.empty(DIM, dtype=np.float32)
        gains[EXPRESSION], gains[EYELID], gains[JAW] = self.expression, self.eyelid, self.jaw
        return gains


def expression_energy(values: np.ndarray) -> np.ndarray:
    """``[N]`` squared norm of the expression coefficients plus the jaw opening (how far from a rest face)."""
    values = np.asarray(values, dtype=np.float64)
    return np.sum(values[:, EXPRESSION] ** 2, axis=1) + values[:, 52] ** 2


class NeutralFrameError(InputError, ValueError):
    """A neutral frame that cannot be used: out of range, without a face, or no valid frame to choose from."""


def check_neutral_in_range(index: int, frames: int, name: str = "neutral frame", first: int = 0,
                           source: str = "the driving motion") -> None:
    """:class:`NeutralFrameError` unless frame number ``index`` is one of the ``frames`` frames from ``first`` (see
    :func:`checked_neutral`; a job checks this before it scans the clip, when only the frame count is known).
    ``source`` names the track in the message."""
    if not first <= index < first + frames:
        part = f" (frames {first} to {first + frames - 1} of the clip, from --start/--end)" if first else \
            f" (0 to {frames - 1})"
        raise NeutralFrameError(f"{name} {index} is out of range: {source} has {frames} frames{part}")


def checked_neutral(track: MotionTrack, index: int, name: str = "neutral frame", first: int = 0,
                    source: str = "the driving motion") -> int:
    """The row of ``track`` of frame number ``index`` if that frame has a face, else :class:`NeutralFrameError`
    (``name`` is how the message calls the frame, e.g. ``--neutral-frame``). ``first``: the frame number of the
    track's first row (a track read from part of a clip, e.g. from ``--start``); the messages use frame numbers and
    call the track ``source``."""
    check_neutral_in_range(index, len(track), name, first, source)
    if not track.valid[index - first]:
        raise NeutralFrameError(f"{name} {index} is not a valid frame of {source} (no face was found in it)")
    return int(index - first)


def neutral_frame(track: MotionTrack, method: Literal["lowest_energy", "median"] = "lowest_energy") -> int:
    """Index of the valid frame to use as the actor's neutral face.

    ``lowest_energy``: the frame with the smallest :func:`expression_energy`. ``median``: the frame closest
    (Euclidean, all 55 values) to the per-value median over valid frames, i.e. the actor's most typical face.
    Raises :class:`NeutralFrameError` when no frame is valid.
    """
    candidates = np.flatnonzero(track.valid)
    if candidates.size == 0:
        raise NeutralFrameError("the driving motion has no frame with a face to take a neutral face from")
    values = track.values[candidates].astype(np.float64)
    if method == "lowest_energy":
        score = expression_energy(values)
    elif method == "median":
        score = np.sum((values - np.median(values, axis=0)) ** 2, axis=1)
    else:
        raise ValueError(f"unknown neutral-frame method {method!r}; use 'lowest_energy' or 'median'")
    return int(candidates[int(np.argmin(score))])


def relative_motion(
    driving: MotionTrack,
    target: np.ndarray,
    neutral: int | Literal["lowest_energy", "median"] = "lowest_energy",
    gains: PartGains = PartGains(),
) -> MotionTrack:
    """``target + gains * (driving - driving[neutral])``, clamped.

    ``target``: float ``[55]`` (one expression, e.g. from the identity photo) or ``[N, 55]`` aligned with
    ``driving`` (each target frame's own expression). ``neutral``: a frame index (must be valid, else
    :class:`NeutralFrameError`) or a method of :func:`neutral_frame`. Validity is the driving track's.
    """
    target = np.asarray(target, dtype=np.float32)
    if target.shape not in ((DIM,), (len(driving), DIM)):
        raise ValueError(f"target expression must be [{DIM}] or [{len(driving)}, {DIM}], got {target.shape}")
    index = neutral_frame(driving, neutral) if isinstance(neutral, str) else checked_neutral(driving, int(neutral))
    delta = driving.values - driving.values[index]
    return driving.with_values(clamp_published(target + gains.vector() * delta))


def apply_gains(track: MotionTrack, gains: PartGains) -> MotionTrack:
    """``gains * values`` per part, clamped to the published ranges."""
    return track.with_values(clamp_published(track.values * gains.vector()))
