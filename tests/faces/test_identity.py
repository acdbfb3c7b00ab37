import warnings

import numpy as np
import onnxruntime
import pytest
from insightface.utils.face_align import norm_crop

from retarget.errors import NoFaceError, WeightsError
from retarget.faces.models import FaceModels
from retarget.faces.identity import ArcFaceEncoder, robust_mean_embedding
from retarget.testing.face_models import write_random_face_models, write_random_scrfd_onnx


def test_random_arcface_gives_unit_512d_embeddings_equal_to_a_direct_run(arcface_path, group_photo, detector):
    encoder = ArcFaceEncoder(arcface_path, device="cpu")
    faces = detector.detect(group_photo)
    keypoints = np.stack([face.keypoints for face in faces])
    embeddings = encoder.embed(group_photo, keypoints)
    assert embeddings.shape == (6, 512) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Independent computation: insightface's own crop, plain onnxruntime, (v - 127.5) / 127.5.
    session = onnxruntime.InferenceSession(str(arcface_path), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # insightface calls a deprecated scikit-image method
        crops = np.stack([norm_crop(group_photo, face.keypoints) for face in faces]).astype(np.float32)
    raw = session.run(None, {"input.1": ((crops - 127.5) / 127.5).transpose(0, 3, 1, 2)})[0]
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.abs(embeddings - expected).max() < 1e-4
    assert np.allclose(encoder.embed(group_photo, keypoints[0]), embeddings[0], atol=1e-6)


def test_wrong_model_and_missing_file_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="arcface.onnx"):
        ArcFaceEncoder(tmp_path / "arcface.onnx")
    scrfd = write_random_scrfd_onnx(tmp_path / "detector.onnx")
    with pytest.raises(WeightsError, match="detector.onnx"):
        ArcFaceEncoder(scrfd)


def test_robust_mean_ignores_outlier_frames():
    rng = np.random.default_rng(0)
    person = rng.normal(size=512)
    person /= np.linalg.norm(person)
    frames = person + rng.normal(scale=0.03, size=(40, 512))
    other = rng.normal(size=512)
    other /= np.linalg.norm(other)
    outliers = other + rng.normal(scale=0.03, size=(10, 512))  # another person tracked in 10 of 50 frames
    embeddings = np.concatenate([frames, outliers])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    robust = robust_mean_embedding(embeddings)
    plain = embeddings.mean(0) / np.linalg.norm(embeddings.mean(0))
    assert np.linalg.norm(robust) == pytest.approx(1.0, abs=1e-5)
    assert float(robust @ person) > 0.99
    assert float(plain @ person) < 0.98


def test_face_models_loads_published_layout_once(tmp_path, astronaut, caplog):
    models = write_random_face_models(tmp_path / "models")
    face_models = FaceModels(models, device="cpu")
    identity = face_models.photo_identity(astronaut)
    assert identity.shape == (512,) and abs(np.linalg.norm(identity) - 1) < 1e-5
    face = face_models.detect(astronaut)[0]
    crop, transform = face_models.align_ffhq(astronaut, face.keypoints)
    assert crop.shape == (512, 512, 3) and transform.size == 512
    flame = face_models.expressions.extract([astronaut, astronaut], np.stack([face.keypoints] * 2))
    assert flame.shape == (2, 55)


def test_photo_without_face_names_the_file(tmp_path, arcface_path):
    from PIL import Image

    path = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300, 3), 180, np.uint8)).save(path)
    face_models = FaceModels(arcface_path.parent.parent, device="cpu")
    with pytest.raises(NoFaceError, match="wall.png"):
        face_models.photo_identity(path)


def test_missing_models_are_reported_when_used(tmp_path, astronaut, astronaut_face):
    face_models = FaceModels(tmp_path, device="cpu")
    with pytest.raises(WeightsError, match="arcface.onnx"):
        face_models.identity.embed(astronaut, astronaut_face.keypoints)
    with pytest.raises(WeightsError, match="SMIRK_em1.pt"):
        face_models.expressions.extract([astronaut], astronaut_face.keypoints[None])


def test_face_models_load_checks_files_up_front(tmp_path, arcface_path, astronaut):
    # arcface present, SMIRK absent: loading only what exists works, loading everything names the missing file
    models = arcface_path.parent.parent
    assert FaceModels(models, device="cpu").load("detector", "identity").identity.model_path == arcface_path
    with pytest.raises(WeightsError, match="SMIRK_em1.pt"):
        FaceModels(models, device="cpu").load()
    with pytest.raises(ValueError, match="unknown face model"):
        FaceModels(models, device="cpu").load("landmarks")
    # no models folder: detection still works (bundled MTCNN), identity says what is missing
    detection_only = FaceModels(None, device="cpu")
    assert len(detection_only.detect(astronaut)) == 1
    with pytest.raises(WeightsError, match="no models folder"):
        detection_only.photo_identity(astronaut)
