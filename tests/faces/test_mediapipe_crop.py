"""The published SMIRK crop (MediaPipe landmarks) is the default whenever mediapipe and face_landmarker.task are
there; the keypoint crop otherwise; a landmarker that cannot load is one WeightsError line."""

from __future__ import annotations

import importlib.util
import logging
import zipfile

import numpy as np
import pytest

from retarget.errors import WeightsError
from retarget.faces import expressions as expressions_module
from retarget.faces import smirk_crop
from retarget.faces.expressions import ExpressionExtractor
from retarget.faces.smirk_crop import MediaPipeLandmarker, keypoint_crop_transform, landmark_crop_transform
from retarget.testing.face_models import write_random_smirk


@pytest.fixture
def models(tmp_path):
    write_random_smirk(tmp_path / "smirk" / "SMIRK_em1.pt")
    with zipfile.ZipFile(tmp_path / "smirk" / "face_landmarker.task", "w") as bundle:
        bundle.writestr("face_detector.tflite", b"x")
    return tmp_path


def test_landmarks_give_the_crop_when_mediapipe_and_the_task_file_are_there(models, astronaut, monkeypatch, caplog):
    points = np.array([[200.0, 60.0], [300.0, 70.0], [250.0, 200.0], [210.0, 190.0]])
    created = []

    class FakeLandmarker:
        available = staticmethod(MediaPipeLandmarker.available)  # the real test: the file and the package

        def __init__(self, task_path):
            created.append(task_path)

        def landmarks(self, image, keypoints=None):
            return points

    real = importlib.util.find_spec
    monkeypatch.setattr(smirk_crop.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "mediapipe" else real(name, *a))
    monkeypatch.setattr(expressions_module, "MediaPipeLandmarker", FakeLandmarker)
    with caplog.at_level(logging.INFO, logger="retarget.faces.expressions"):
        extractor = ExpressionExtractor.from_models_dir(models, device="cpu", channel_order="bgr")
    assert created == [models / "smirk" / "face_landmarker.task"] and extractor.channel_order == "bgr"
    task = models / "smirk" / "face_landmarker.task"
    assert f"SMIRK crop: from MediaPipe landmarks ({task}), BGR input" in caplog.text
    keypoints = np.array([[230, 110], [270, 110], [250, 135], [235, 160], [265, 160]], np.float32)
    expected = np.floor(landmark_crop_transform(points).warp(astronaut, dtype=np.float32)) / 255.0
    np.testing.assert_array_equal(extractor.crop(astronaut, keypoints), expected)
    from_keypoints = np.floor(keypoint_crop_transform(keypoints).warp(astronaut, dtype=np.float32)) / 255.0
    assert not np.array_equal(expected, from_keypoints)


def test_without_mediapipe_the_keypoint_crop_is_used_and_the_log_says_why(models, monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(smirk_crop.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mediapipe" else real(name, *a))
    with caplog.at_level(logging.INFO, logger="retarget.faces.expressions"):
        extractor = ExpressionExtractor.from_models_dir(models, device="cpu")
    assert extractor.landmarker is None
    assert "SMIRK crop: from the detector's keypoints (mediapipe is not installed: pip install mediapipe), RGB input" \
        in caplog.text


def test_a_broken_task_file_is_one_weights_error_line(models):
    pytest.importorskip("mediapipe")
    with pytest.raises(WeightsError) as caught:
        MediaPipeLandmarker(models / "smirk" / "face_landmarker.task")
    message = str(caught.value)
    task = models / "smirk" / "face_landmarker.task"
    assert message.startswith(f"cannot load the MediaPipe face landmarker {task} (")
    assert "\n" not in message
