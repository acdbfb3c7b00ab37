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


class CountingEmbedder:
    """Identity embeddings (unit vectors, one per person) of a frame's faces, counting the calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, people):
        def embed():
            self.calls += 1
            return np.stack([np.eye(3, 512, dtype=np.float32)[person] for person in people])
        return embed


def test_the_followed_person_is_not_swapped_for_another_when_they_leave():
    """Person 1 (right) is followed; they leave for frames 8-19 while person 0 stays a face size or two away: the
    frames without them are missing (not person 0's), and they are taken again when they come back."""
    embedder = CountingEmbedder()
    tracker = FaceTracker(face_index=1)
    for t in range(30):
        left, right = make_face((180, 200), 60), make_face((300, 200), 60)
        faces, people = ([left], [0]) if 8 <= t < 20 else ([left, right], [0, 1])
        chosen = tracker.update(faces, embed=embedder(people))
        assert (chosen is None) if 8 <= t < 20 else (chosen is right), t
    # without identity, position alone takes the other person once the allowance grows (what embeddings prevent)
    blind = FaceTracker(face_index=1)
    taken = [blind.update([make_face((180, 200), 60)] if 8 <= t < 20 else
                          [make_face((180, 200), 60), make_face((300, 200), 60)]) for t in range(30)]
    assert any(face is not None and face.center[0] < 250 for face in taken)


def test_a_face_that_comes_back_elsewhere_is_taken_at_once_by_identity():
    embedder = CountingEmbedder()
    tracker = FaceTracker()
    present = []
    for t in range(40):
        faces = [] if 8 <= t < 14 else [make_face((100, 100) if t < 8 else (600, 100), 60)]
        present.append(tracker.update(faces, embed=embedder([2] * len(faces))) is not None)
    assert present == [not 8 <= t < 14 for t in range(40)]
    # ... but not another person coming in where ours was
    other = FaceTracker()
    other.update([make_face((200, 100), 60)], embed=embedder([0]))
    assert other.update([]) is None
    stranger = [make_face((260, 100), 60)]  # one face size away, within the allowance, another person
    assert other.update(stranger, embed=embedder([1])) is None


def test_one_face_followed_without_a_break_costs_one_embedding():
    embedder = CountingEmbedder()
    tracker = FaceTracker()
    for t in range(50):
        faces = [make_face((100 + t, 100), 60)]
        assert tracker.update(faces, embed=embedder([0])) is faces[0]
    assert embedder.calls == 1  # the track's person, from its first face
    two = [make_face((150, 100), 60), make_face((400, 100), 60)]
    assert tracker.update(two, embed=embedder([0, 1])) is two[0]
    assert embedder.calls == 2


def test_a_cut_to_another_person_where_ours_was_is_not_followed():
    """Shot 1: person 0 on the left; shot 2 (a cut): person 0 on the right; shot 3 (a cut): person 1 where person 0
    stood. Position alone would miss the first cut and follow person 1 after the second; with the cuts known,
    identity decides there."""
    embedder = CountingEmbedder()
    tracker = FaceTracker()
    chosen = []
    for t in range(30):
        center, person = ((100 + t, 100), 0) if t < 10 else ((500 + t, 100), 0) if t < 20 else ((519, 100), 1)
        faces = [make_face(center, 60)]
        chosen.append(tracker.update(faces, embed=embedder([person]), cut=t in (10, 20)))
    assert [face is not None for face in chosen] == [t < 20 for t in range(30)]
    assert chosen[10].center[0] == 510  # taken at once in the new shot, no missed frame
    assert embedder.calls == 1 + 1 + 10  # the first face, the first cut, every frame after the second cut
    track = tracker.finish()
    assert track.detected.tolist() == [t < 20 for t in range(30)] and not track.filled.any()

    # without the cuts: a missed frame at the first cut, filled across the cut, and person 1 taken after the second
    blind = FaceTracker()
    for t in range(30):
        center, person = ((100 + t, 100), 0) if t < 10 else ((500 + t, 100), 0) if t < 20 else ((519, 100), 1)
        blind.update([make_face(center, 60)], embed=embedder([person]))
    track = blind.finish()
    assert track.filled.tolist() == [t == 10 for t in range(30)] and track.present[20:].all()


def test_a_cut_without_identity_leaves_position_to_decide():
    tracker = FaceTracker()
    tracker.update([make_face((100, 100), 60)])
    assert tracker.update([make_face((110, 100), 60)], cut=True) is not None
    assert tracker.update([make_face((400, 100), 60)], cut=True) is None


def test_gaps_are_not_filled_across_a_cut():
    values = np.arange(12, dtype=np.float32)[:, None]
    known = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1], bool)
    cuts = np.zeros(12, bool)
    cuts[[4, 8]] = True  # the gap 3-4 has its cut inside, the gap 7 right after it (the later detection's frame)
    filled_values, filled = fill_keypoint_gaps(values, known, max_gap=2, cuts=cuts)
    assert np.flatnonzero(filled).tolist() == [1, 10]
    assert np.allclose(filled_values[[1, 10], 0], [1, 10])
    assert np.array_equal(fill_keypoint_gaps(values, known, max_gap=2)[1],
                          ~known & (np.arange(12) > 0) & (np.arange(12) < 11))
