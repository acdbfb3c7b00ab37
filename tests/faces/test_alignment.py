import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from retarget.faces.alignment import ARCFACE_TEMPLATE_112, arcface_transform, estimate_similarity, ffhq_quad, ffhq_transform


def test_similarity_matches_skimage_umeyama(astronaut_face):
    source = astronaut_face.keypoints.astype(np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        reference = SimilarityTransform.from_estimate(source, ARCFACE_TEMPLATE_112)
    else:  # scikit-image 0.25, the newest on Python 3.10
        reference = SimilarityTransform()
        assert reference.estimate(source, ARCFACE_TEMPLATE_112)
    assert np.allclose(arcface_transform(astronaut_face.keypoints).matrix, reference.params[:2], atol=1e-6)


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.random.default_rng(0).uniform(0, 100, (5, 2))
    matrix = estimate_similarity(source, source @ rotation.T + shift)
    assert np.allclose(matrix, np.concatenate([rotation, shift[:, None]], axis=1), atol=1e-9)


@pytest.mark.parametrize("make", [lambda k: arcface_transform(k), lambda k: ffhq_transform(k, 512), lambda k: ffhq_transform(k, 1024)])
def test_align_then_inverse_round_trip_is_exact(astronaut_face, make):
    transform = make(astronaut_face.keypoints)
    points = np.random.default_rng(1).uniform(0, 512, (100, 2))
    assert np.abs(transform.to_frame(transform.to_crop(points)) - points).max() < 1e-6
    assert np.abs(transform.to_crop(transform.to_frame(points)) - points).max() < 1e-6


def test_arcface_crop_puts_keypoints_on_the_template(astronaut_face):
    crop_points = arcface_transform(astronaut_face.keypoints).to_crop(astronaut_face.keypoints)
    assert np.abs(crop_points - ARCFACE_TEMPLATE_112).max() < 6.0  # she smiles: wider mouth than the template


def test_ffhq_quad_follows_the_recipe_formulas():
    keypoints = np.array([[100, 100], [140, 100], [120, 125], [105, 150], [135, 150]], float)
    quad = ffhq_quad(keypoints)
    # eye_to_eye = (40, 0), eye_to_mouth = (0, 50): x axis length max(80, 90) = 90, centre (120, 105).
    assert np.allclose(quad, [[30, 15], [30, 195], [210, 195], [210, 15]])
    transform = ffhq_transform(keypoints, 512)
    # PIL quad convention: output pixel (i, j) samples quad origin + (i + 0.5, j + 0.5) * side / size.
    expected = [[30 + 0.5 * 180 / 512, 15 + 0.5 * 180 / 512], [30 + 511.5 * 180 / 512, 15 + 511.5 * 180 / 512]]
    assert np.allclose(transform.to_frame([[0, 0], [511, 511]]), expected)


def test_ffhq_crop_of_a_frontal_face_is_centred_and_level(astronaut, astronaut_face):
    transform = ffhq_transform(astronaut_face.keypoints, 512)
    crop = transform.warp(astronaut)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    eyes = transform.to_crop(astronaut_face.keypoints[:2])
    assert abs((eyes[0, 0] + eyes[1, 0]) / 2 - 256) < 3 and abs(eyes[0, 1] - eyes[1, 1]) < 1.0
    assert 200 < eyes[0, 1] < 260  # FFHQ places the eyes a little above the middle


def test_antialiased_warp_keeps_the_geometry():
    # A smooth image: shrinking with or without area pre-averaging must sample the same places.
    yy, xx = np.mgrid[:2000, :2000].astype(np.float32)
    image = np.stack([xx / 2000 * 255, yy / 2000 * 255, (xx + yy) / 4000 * 255], axis=-1).astype(np.uint8)
    keypoints = np.array([[800, 800], [1200, 800], [1000, 1000], [850, 1250], [1150, 1250]], np.float32)
    transform = ffhq_transform(keypoints, 256)
    assert transform.antialias and transform.scale < 0.5
    plain = cv2.warpAffine(image, transform.matrix, (256, 256), flags=cv2.INTER_LINEAR)
    assert np.abs(transform.warp(image).astype(int) - plain.astype(int)).max() <= 2


def test_degenerate_keypoints_are_rejected():
    with pytest.raises(ValueError, match="degenerate"):
        arcface_transform(np.zeros((5, 2)))
