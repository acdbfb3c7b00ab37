import logging

import numpy as np
import pytest

from retarget.errors import WeightsError
from retarget.faces.detection import load_detector, non_maximum_suppression
from retarget.faces.mtcnn import MtcnnDetector
from retarget.faces.scrfd import ScrfdDetector, decode_scrfd_level
from retarget.testing.face_models import write_random_scrfd_onnx


def assert_plausible(face):
    left_eye, right_eye, nose, left_mouth, right_mouth = face.keypoints
    assert face.keypoints.dtype == np.float32 and face.keypoints.shape == (5, 2)
    x1, y1, x2, y2 = face.bbox
    assert np.all((face.keypoints[:, 0] > x1) & (face.keypoints[:, 0] < x2))
    assert np.all((face.keypoints[:, 1] > y1) & (face.keypoints[:, 1] < y2))
    eye_distance = np.linalg.norm(right_eye - left_eye)
    assert 0.2 * (x2 - x1) < eye_distance < 0.8 * (x2 - x1)
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert 0.9 < face.score <= 1.0


def test_astronaut_has_one_face_with_plausible_keypoints(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    assert_plausible(faces[0])
    # Her eyes are about 42 px apart, centred near x = 225, y = 102 in the 512x512 photo.
    left_eye, right_eye = faces[0].keypoints[:2]
    assert 35 < np.linalg.norm(right_eye - left_eye) < 50
    assert np.allclose((left_eye + right_eye) / 2, [225, 102], atol=6)


def test_group_photo_has_six_faces_largest_first(detector, group_photo):
    faces = detector.detect(group_photo)
    assert len(faces) == 6
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)
    for face in faces:
        assert_plausible(face)


def test_tight_crop_photo(detector, hanks):
    faces = detector.detect(hanks)
    assert len(faces) == 1
    assert_plausible(faces[0])


def test_no_face_in_a_flat_image(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_downscaled_detection_maps_back_to_input_pixels(astronaut):
    full = MtcnnDetector(device="cpu", max_side=1024).detect(astronaut)[0]
    small = MtcnnDetector(device="cpu", max_side=256).detect(astronaut)[0]
    assert np.abs(full.keypoints - small.keypoints).max() < 4.0


def test_load_detector_falls_back_to_mtcnn_and_logs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="retarget.faces.detection"):
        detector = load_detector(tmp_path, device="cpu")
    assert isinstance(detector, MtcnnDetector)
    assert "MTCNN" in caplog.text and "scrfd_10g_bnkps.onnx not found" in caplog.text


def test_load_detector_prefers_published_scrfd(tmp_path, caplog, astronaut):
    path = write_random_scrfd_onnx(tmp_path / "antelopev2" / "scrfd_10g_bnkps.onnx")
    with caplog.at_level(logging.INFO, logger="retarget.faces.detection"):
        detector = load_detector(tmp_path, device="cpu")
    assert isinstance(detector, ScrfdDetector) and str(path) in caplog.text
    faces = detector.detect(astronaut)  # random weights: junk boxes, but the real decoding path
    assert len(faces) > 0
    assert all(face.keypoints.shape == (5, 2) and 0.5 <= face.score <= 1 for face in faces)


def test_broken_scrfd_file_is_a_weights_error(tmp_path):
    path = tmp_path / "antelopev2" / "scrfd_10g_bnkps.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="scrfd_10g_bnkps.onnx"):
        load_detector(tmp_path, device="cpu")


def test_scrfd_decoding_of_one_anchor():
    height = width = 32
    stride = 8
    count = (height // stride) * (width // stride) * 2
    scores = np.zeros((count, 1), np.float32)
    boxes = np.ones((count, 4), np.float32)
    kps = np.zeros((count, 10), np.float32)
    anchor = (1 * 4 + 2) * 2 + 1  # row 1, column 2, second anchor -> centre (16, 8)
    scores[anchor] = 0.9
    boxes[anchor] = [1, 0.5, 2, 1.5]
    kps[anchor] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
    s, b, k = decode_scrfd_level(scores, boxes, kps, stride, height, width)
    assert s[anchor] == pytest.approx(0.9)
    assert np.allclose(b[anchor], [16 - 8, 8 - 4, 16 + 16, 8 + 12])
    assert np.allclose(k[anchor], [[8, 0], [24, 0], [16, 8], [8, 16], [24, 16]])


def test_non_maximum_suppression():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    assert non_maximum_suppression(boxes, scores, 0.5).tolist() == [1, 3, 2]
    assert non_maximum_suppression(boxes, scores, 0.5, mode="min").tolist() == [1, 2]


def _same_faces(many, single):
    assert len(many) == len(single)
    for a, b in zip(many, single):
        np.testing.assert_allclose(a.bbox, b.bbox, rtol=0, atol=1e-3)
        np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=0, atol=1e-3)
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_batched_scrfd_detection_equals_per_image_on_real_photos(tmp_path, astronaut, group_photo, hanks):
    photos = [astronaut, group_photo, hanks, astronaut[::-1].copy()]  # different sizes: each its own letterbox
    dynamic = ScrfdDetector(write_random_scrfd_onnx(tmp_path / "dynamic.onnx", dynamic_batch=True), device="cpu")
    fixed = ScrfdDetector(write_random_scrfd_onnx(tmp_path / "fixed.onnx"), device="cpu")
    assert dynamic.batched and not fixed.batched  # the published export has a batch of 1: per image
    calls = []
    run = dynamic.session.run
    dynamic.session = type("Counting", (), {"run": lambda self, *a: calls.append(a[1]) or run(*a)})()
    batched = dynamic.detect_many(photos)
    assert len(calls) == 1 and next(iter(calls[0].values())).shape[0] == len(photos)  # one call for all
    per_image = [dynamic.detect(photo) for photo in photos]
    assert sum(len(faces) for faces in per_image) > 0
    for many, single in zip(batched, per_image):
        _same_faces(many, single)
    for many, single in zip(fixed.detect_many(photos), [fixed.detect(photo) for photo in photos]):
        _same_faces(many, single)


def test_mtcnn_detect_many_equals_detect(detector, group_photo, hanks):
    for many, single in zip(detector.detect_many([group_photo, hanks]), [detector.detect(group_photo),
                                                                        detector.detect(hanks)]):
        _same_faces(many, single)


def test_detect_many_works_on_several_images_at_once_in_order(detector, astronaut, group_photo, hanks, monkeypatch):
    """The default ``detect_many`` runs ``threads`` images at once on worker threads and returns each image's
    faces in the input's order, the same as one ``detect`` per image; with one thread it runs on the caller's."""
    import threading

    photos = [group_photo, hanks, astronaut, hanks, group_photo]
    expected = [detector.detect(photo) for photo in photos]
    first_three = threading.Barrier(3, timeout=30)  # broken unless three images are in detect at the same time
    seen = []
    detect = detector.detect

    def watched(image):
        seen.append(threading.current_thread().name)
        if len(seen) <= 3:
            first_three.wait()
        return detect(image)

    monkeypatch.setattr(detector, "threads", 3)
    stacked = detector.detect_many(np.stack([hanks, hanks]))  # an [N, H, W, 3] array works too
    assert [len(faces) for faces in stacked] == [len(expected[1])] * 2
    monkeypatch.setattr(detector, "detect", watched)
    found = detector.detect_many(photos)
    assert len(found) == len(photos) and [len(faces) for faces in found] == [6, 1, 1, 1, 6]
    for many, single in zip(found, expected):
        _same_faces(many, single)
    assert len(set(seen)) == 3 and all(name.startswith("retarget-detect") for name in seen)

    seen.clear()
    monkeypatch.setattr(detector, "threads", 1)
    monkeypatch.setattr(detector, "detect",
                        lambda image: (seen.append(threading.current_thread().name), detect(image))[1])
    assert [len(faces) for faces in detector.detect_many(photos[:2])] == [6, 1]
    assert seen == [threading.current_thread().name] * 2


def test_detection_threads_are_two_per_core_up_to_eight(monkeypatch):
    import os

    from retarget.faces.detection import MAX_DETECTION_THREADS, detection_threads

    for cores, threads in ((1, 2), (2, 4), (4, 8), (64, MAX_DETECTION_THREADS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert detection_threads() == threads


def _threading_of(session) -> tuple[int, str]:
    options = session.get_session_options()
    return options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")


def test_detector_sessions_keep_each_call_on_one_thread_and_never_spin(detector, tmp_path):
    """detect_many's pool is the detectors' parallelism: each onnxruntime call keeps to its caller's thread, and no
    session's threads busy-wait between calls (which took the cores of the stages running beside the scan). A
    batch-axis SCRFD, called once for all images, keeps onnxruntime's threads."""
    from retarget.faces.identity import ArcFaceEncoder
    from retarget.testing.face_models import write_random_arcface_onnx

    for session in (detector.proposal, detector.refine, detector.output):
        assert _threading_of(session) == (1, "0")
    fixed = ScrfdDetector(write_random_scrfd_onnx(tmp_path / "fixed.onnx"), device="cpu")
    dynamic = ScrfdDetector(write_random_scrfd_onnx(tmp_path / "dynamic.onnx", dynamic_batch=True), device="cpu")
    assert _threading_of(fixed.session) == (1, "0")
    assert _threading_of(dynamic.session) == (0, "0")  # 0: onnxruntime's default, one thread per physical core
    arcface = ArcFaceEncoder(write_random_arcface_onnx(tmp_path / "arcface.onnx"), device="cpu")
    assert _threading_of(arcface.session) == (0, "0")
