import numpy as np

from retarget.faces.detection import Face
from retarget.faces.tracking import FaceTracker, fill_keypoint_gaps, select_face

BASE = np.array([[-10, -8], [10, -8], [0, 0], [-8, 10], [8, 10]], np.float32)


def make_face(center, size):
    keypoints = BASE * (size / 40.0) + np.asarray(center, np.float32)
    half = size / 2
    return Face(np.array([center[0] - half, center[1] - half, center[0] + half, center[1] + half], np.float32), keypoints, 0.99)


def frames_of_two_people(count=20):
    """Person A walks right and shrinks; person B stands still and grows: their size order swaps mid-clip."""
    frames = []
    for t in range(count):
        a = make_face((100 + 5 * t, 200), 80 - 2 * t)
        b = make_face((400, 200), 50 + 2 * t)
        frames.append(sorted([a, b], key=lambda f: -f.area))
    return frames


def test_select_face_by_index_size_and_reference():
    faces = [make_face((100, 100), 80), make_face((300, 100), 40)]
    assert select_face(faces) == 0
    assert select_face(faces, face_index=1) == 1
    assert select_face(faces, face_index=2) is None
    assert select_face([]) is None
    embeddings = np.eye(2, 512, dtype=np.float32)
    assert select_face(faces, embeddings=embeddings, reference=embeddings[1]) == 1
    assert select_face(faces, embeddings=embeddings, reference=np.eye(3, 512)[2]) is None  # nobody matches


def test_tracker_follows_the_chosen_face_when_size_order_changes():
    tracker = FaceTracker(face_index=1)  # B is the smaller one at the start
    for faces in frames_of_two_people():
        chosen = tracker.update(faces)
        assert abs(chosen.center[0] - 400) < 1  # always B, also after B becomes the largest
    track = tracker.finish()
    assert track.detected.all() and not track.filled.any()
    assert np.allclose(track.keypoints[:, 2, 0], 400)


def test_tracker_uses_embeddings_to_stay_on_the_reference_person():
    reference = np.eye(2, 512, dtype=np.float32)[0]
    tracker = FaceTracker(reference=reference)
    for t in range(10):
        a, b = make_face((200 + 2 * t, 200), 60), make_face((215 + 2 * t, 200), 62)  # overlapping, similar size
        faces = [b, a]
        embeddings = np.stack([np.eye(2, 512)[1], np.eye(2, 512)[0]]).astype(np.float32)
        assert tracker.update(faces, embeddings) is a


def test_missing_frames_are_marked_and_short_gaps_filled_by_interpolation():
    tracker = FaceTracker(max_gap=3)
    frames = frames_of_two_people(20)
    for t, faces in enumerate(frames):
        visible = [] if t in (5, 6, 7) or 12 <= t <= 16 else faces
        tracker.update(visible)
    track = tracker.finish()
    assert track.detected.sum() == 12
    assert track.filled.tolist() == [t in (5, 6, 7) for t in range(20)]
    # Person A (largest at first) moves 5 px per frame: interpolation across 4..8 is exact.
    assert np.allclose(track.keypoints[5:8, 2, 0], [125, 130, 135], atol=1e-4)
    assert np.isnan(track.keypoints[12:17]).all() and not track.present[12:17].any()


def test_tracker_drops_a_jump_to_another_face():
    tracker = FaceTracker()
    tracker.update([make_face((100, 100), 60)])
    assert tracker.update([make_face((400, 100), 60)]) is None  # only a far-away face: not ours
    assert tracker.update([make_face((104, 100), 60), make_face((400, 100), 60)]).center[0] < 200


def test_fill_keypoint_gaps_leaves_ends_and_long_gaps():
    values = np.arange(10, dtype=np.float32)[:, None]
    known = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1], bool)
    filled_values, filled = fill_keypoint_gaps(values, known, max_gap=2)
    assert filled.tolist() == [False, False, False, True, True, False, False, False, False, False]
    assert np.allclose(filled_values[3:5, 0], [3, 4])
