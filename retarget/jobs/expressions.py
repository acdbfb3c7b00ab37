"""The expressions a job renders: the driving motion, optionally made relative to a neutral frame and scaled per part.

Absolute mode (default): the driving values themselves, times the per-part gains, clamped to the published
ranges (SMIRK's own outputs lie within them, but smoothing can overshoot a bound, e.g. a jaw opening just under
0). Relative mode transfers the driving clip's *changes* rather than the actor's absolute face::

    rendered = clamp(own + gains * (driving - driving[neutral]))

where ``own`` is the target's own expression (``run``: the identity photo's SMIRK values; ``edit``: each frame's
own values) and ``neutral`` a frame of the driving track (a frame number, or the lowest-energy valid frame, see
:func:`retarget.motion.neutral_frame`). ``clamp`` keeps the published ranges
(:func:`retarget.motion.clamp_published`); this is :func:`retarget.motion.relative_motion` with the neutral
given as values, so that ``edit`` can take it from the source before the source is resampled to the clip.
"""

from __future__ import annotations

import numpy as np

from retarget.jobs.options import JobOptions
from retarget.motion.adjust import PartGains, apply_gains, checked_neutral, neutral_frame
from retarget.motion.track import MotionTrack, clamp_published


def neutral_values(track: MotionTrack, frame: int | None, first: int = 0,
                   valid: np.ndarray | None = None, source: str = "the driving motion") -> np.ndarray:
    """float32 ``[55]``: the values of ``track`` at its neutral frame, ``frame`` (a frame number, checked: in range
    and with a face; ``first`` is the frame number of the track's first row) or, for ``None``, the lowest-energy
    frame with a face. ``valid`` (bool ``[N]``, default ``track.valid``): the frames with a face, for a ``track``
    whose gaps were filled (:func:`~retarget.jobs.common.prepared_motion` marks every frame valid). A bad frame, or
    a track without any face, raises :class:`~retarget.motion.adjust.NeutralFrameError` (an
    :class:`~retarget.errors.InputError`; ``source`` names the track in its message)."""
    faces = track if valid is None else track.with_values(track.values, valid=np.asarray(valid, bool))
    index = neutral_frame(faces) if frame is None else checked_neutral(faces, frame, "--neutral-frame", first,
                                                                       source)
    return track.values[index].copy()


def rendered_expressions(driving: MotionTrack, options: JobOptions, own: np.ndarray | None = None,
                         neutral: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[N, 55]`` to render for ``driving``'s ``N`` frames under ``options`` (see the module doc).

    Relative mode (``options.relative``) needs ``own`` (``[55]`` or ``[N, 55]``) and ``neutral`` (``[55]``, from
    :func:`neutral_values`); absolute mode ignores both.
    """
    gains: PartGains = options.gains
    if not options.relative:
        return apply_gains(driving, gains).values  # clamped even at gain 1: smoothing can overshoot a range
    if own is None or neutral is None:
        raise ValueError("relative mode needs the target's own expression and the neutral values")
    delta = driving.values - np.asarray(neutral, np.float32)
    return clamp_published(np.asarray(own, np.float32) + gains.vector() * delta).astype(np.float32)
