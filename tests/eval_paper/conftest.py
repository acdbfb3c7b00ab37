"""Fixtures for the image protocol's tests: tiny random weights, real photos, and one shared render session."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from retarget.testing.media import face_photo, moving_face_frames, second_face_photo

#: Valid frames of the test motion file (frame 2 has no face); with ``motion_frames=2`` the first and last are used.
MOTION_VALID = (True, True, False, True)


@pytest.fixture(scope="session")
def paper_inputs(tmp_path_factory):
    """``{"identities": DIR, "expressions": DIR}``. Identities: astronaut.png and hanks.png (real faces) and
    blank.png (no face). Expressions: a.png and b.png (the astronaut, two framings) and motion.npz (4 frames, 3
    valid)."""
    from retarget.motion.motion_file import save_motion
    from retarget.motion.track import MotionTrack

    root = tmp_path_factory.mktemp("paper-inputs")
    identities, expressions = root / "identities", root / "expressions"
    identities.mkdir()
    expressions.mkdir()
    Image.fromarray(face_photo()).save(identities / "astronaut.png")
    Image.fromarray(second_face_photo()).save(identities / "hanks.png")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(identities / "blank.png")
    frames = moving_face_frames(8)
    Image.fromarray(frames[0]).save(expressions / "a.png")
    Image.fromarray(frames[5]).save(expressions / "b.png")
    values = np.random.default_rng(3).normal(0, 0.5, (4, 55)).astype(np.float32)
    values[:, 50:] = np.clip(values[:, 50:], 0, 0.2)
    save_motion(MotionTrack(values, np.array(MOTION_VALID), np.arange(4) / 25.0, Fraction(25)),
                expressions / "motion.npz")
    return {"identities": identities, "expressions": expressions, "motion_values": values}


def job_options(models, base, **overrides):
    from retarget.jobs.options import JobOptions

    settings = {"models": models, "base_model": str(base), "steps": 2, "guidance": 1.0, "seed": 0, "per_frame_noise": True,
                    "batch_size": 3, "device": "cpu", "progress": False}
    settings.update(overrides)
    return JobOptions(**settings)


@pytest.fixture(scope="session")
def paper_session(cli_models):
    """One loaded :class:`RenderSession` on the tiny weights (batch size 3: batches cross identities)."""
    from retarget.jobs.session import RenderSession

    return RenderSession(job_options(*cli_models)).load()


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory):
    """A state-dict file of torchvision's Inception-v3 with random weights (the layout of the real file)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / "inception_v3_google-random.pth"
    torch.save(model.state_dict(), path)
    return path
