"""Evaluation of rendered output: identity judges (:mod:`.judges`), the metrics (:mod:`.metrics`) and the
evaluation of a rendered clip (:mod:`.clip`, ``retarget eval``)."""

from .judges import ArcFaceJudge, IdentityJudge, SFaceJudge, cosine, identity_judges
from .metrics import (
    FlickerMeter,
    channel_correlation,
    exp_mse,
    flicker,
    identity_summary,
    jitter,
    jitter_ratio,
)

__all__ = [
    "ArcFaceJudge",
    "FlickerMeter",
    "IdentityJudge",
    "SFaceJudge",
    "channel_correlation",
    "cosine",
    "exp_mse",
    "flicker",
    "identity_judges",
    "identity_summary",
    "jitter",
    "jitter_ratio",
]
