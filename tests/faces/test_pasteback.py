import cv2
import numpy as np

from retarget.faces.alignment import ffhq_transform
from retarget.faces.pasteback import face_mask, paste_back

from .conftest import psnr


def _round_trip(frame, keypoints):
    transform = ffhq_transform(keypoints, 512)
    pasted = paste_back(frame, transform.warp(frame), transform)
    inside = cv2.warpAffine(face_mask(512), transform.inverse, frame.shape[1::-1]) > 0.5
    return transform, pasted, inside


def test_unchanged_crop_reproduces_the_frame_at_512(astronaut, astronaut_face):
    transform, pasted, inside = _round_trip(astronaut, astronaut_face.keypoints)
    assert inside.sum() > 5000
    assert psnr(pasted[inside], astronaut[inside]) > 40
    x0, y0, x1, y1 = transform.frame_box(astronaut.shape)
    outside = np.ones(astronaut.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(pasted[outside], astronaut[outside])  # only the face's region is touched


def test_unchanged_crop_reproduces_the_frame_at_1080p(detector, astronaut):
    frame = cv2.resize(astronaut, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    face = detector.detect(frame)[0]
    _, pasted, inside = _round_trip(frame, face.keypoints)
    assert psnr(pasted[inside], frame[inside]) > 40


def test_mask_is_feathered_and_centred():
    mask = face_mask(512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32 and not mask.flags.writeable
    assert mask[300, 256] > 0.99 and mask[0, 0] == 0 and mask[511, 511] == 0
    assert 0.2 < mask.mean() < 0.45
    assert face_mask(512) is mask  # computed once: identical for every frame


def test_pasted_face_replaces_the_inside_and_keeps_the_outside(astronaut, astronaut_face):
    transform = ffhq_transform(astronaut_face.keypoints, 512)
    green = np.zeros((512, 512, 3), np.uint8)
    green[..., 1] = 255
    pasted = paste_back(astronaut, green, transform)
    centre = np.round(astronaut_face.keypoints[2]).astype(int)
    assert tuple(pasted[centre[1], centre[0]]) == (0, 255, 0)
    assert np.array_equal(pasted[:20], astronaut[:20])


def test_color_matching_undoes_a_colour_cast(astronaut, astronaut_face):
    transform = ffhq_transform(astronaut_face.keypoints, 512)
    crop = transform.warp(astronaut).astype(np.int16)
    tinted = np.clip(crop + np.array([40, -20, 30]), 0, 255).astype(np.uint8)
    inside = cv2.warpAffine(face_mask(512), transform.inverse, astronaut.shape[1::-1]) > 0.5
    plain = paste_back(astronaut, tinted, transform)
    matched = paste_back(astronaut, tinted, transform, color_match=True)
    assert psnr(matched[inside], astronaut[inside]) > psnr(plain[inside], astronaut[inside]) + 8
