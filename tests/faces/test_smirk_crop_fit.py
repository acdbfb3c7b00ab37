"""The fit behind the keypoint crop's two constants recovers known constants from synthetic measurements, and
scoring the constants in use on the canonical face gives the expected side difference."""

import numpy as np
import pytest

from eval.smirk_crop_fit import fit, keypoint_crop, model_units, score
from retarget.faces import smirk_crop
from retarget.faces.smirk_crop import CANONICAL_FACE_KEYPOINTS, CANONICAL_FACE_OUTLINE


def test_fit_recovers_scale_and_yaw_shift_with_sources_weighted_equally():
    rng = np.random.default_rng(0)
    rows = []
    for source, count in (("a", 50), ("b", 3), ("c", 7)):
        noses = rng.uniform(-1.5, 1.5, count)
        for nose in noses:
            rows.append((source, 0.9 + rng.normal(0, 0.001), -1.8 * nose + 0.02 + rng.normal(0, 0.001), nose))
    scale, yaw_shift = fit(rows)
    assert scale == pytest.approx(0.9, abs=0.002) and yaw_shift == pytest.approx(-1.8, abs=0.01)


def test_model_units_of_a_landmark_box_that_is_the_keypoint_crop_give_ratio_one():
    keypoints = CANONICAL_FACE_KEYPOINTS * 9.0 + np.array([150.0, 120.0])
    outline = CANONICAL_FACE_OUTLINE * 9.0 + np.array([150.0, 120.0])  # the uncorrected crop's outline itself
    ratio, offset, nose = model_units(keypoints, outline)
    assert ratio == pytest.approx(1.0, abs=0.01) and offset == pytest.approx(0.0, abs=0.05) and nose == pytest.approx(0.0, abs=1e-9)
    # the constants in use shrink the crop of that face by KEYPOINT_CROP_SCALE (to within the crop's integer side)
    side_error, centre_error, faces = score([("x", keypoints, outline)], smirk_crop.KEYPOINT_CROP_SCALE, 0.0)["x"]
    assert faces == 1 and side_error == pytest.approx(smirk_crop.KEYPOINT_CROP_SCALE - 1, abs=0.01)
    assert keypoint_crop(keypoints, 1.0, 0.0).scale != smirk_crop.keypoint_crop_transform(keypoints).scale
