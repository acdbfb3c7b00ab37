"""Shot changes: a cut between two real photos is found, motion inside a shot is not."""

from __future__ import annotations

import numpy as np
from PIL import Image

from retarget.testing.media import face_photo, moving_face_frames, second_face_photo
from retarget.video.shots import CUT_THRESHOLD, ShotChanges, content_score


def _square(photo: np.ndarray, side: int = 200) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).resize((side, side), Image.BILINEAR))


def test_content_score_is_the_mean_hsv_difference_with_hue_on_the_circle():
    before = np.zeros((2, 2, 3), np.float32)
    after = before.copy()
    after[..., 0] = [[170, 10], [90, 0]]  # hue 170 is 10 away from 0 the short way round
    after[..., 2] = 60
    assert np.isclose(content_score(before, after), (10 + 10 + 90 + 0 + 4 * 60) / 12)


def test_a_cut_between_two_people_is_found_and_motion_within_a_shot_is_not():
    astronaut, hanks = _square(face_photo()), _square(second_face_photo())
    shots = ShotChanges()
    frames = [np.roll(astronaut, 3 * t, axis=1) for t in range(6)] + [np.roll(hanks, 3 * t, axis=1) for t in range(6)]
    cuts = [shots.is_cut(frame) for frame in frames]
    assert cuts == [t == 6 for t in range(12)]

    scores = ShotChanges()
    moving = [scores.score(frame) for frame in moving_face_frames(24)]
    assert moving[0] is None and max(moving[1:]) < CUT_THRESHOLD / 3
    assert ShotChanges().score(astronaut) is None


def test_a_change_of_picture_size_restarts_the_stream_instead_of_failing():
    shots = ShotChanges()
    assert not shots.is_cut(np.zeros((40, 60, 3), np.uint8))
    assert shots.score(np.zeros((60, 40, 3), np.uint8)) is None
    assert shots.score(np.full((60, 40, 3), 255, np.uint8)) == 255 / 3
