"""Which face, over time: selection among several faces, a stable track across frames, gap filling.

Selection in the first frame (and when the track is lost): by a reference identity embedding when given (the
most similar face, if its cosine similarity reaches ``min_similarity``), else by ``face_index`` (faces ordered
largest first, as detectors return them), else the largest face.

Following: in each later frame the face nearest to the track's last position is taken if it moved less than
``max_jump`` face sizes (the allowance grows with the frames since it was last seen). Where identity embeddings
are at hand (a reference photo's, or the track's own, taken from its first face when :meth:`FaceTracker.update` is
given a way to compute them), they decide whenever position alone could pick the wrong person: a candidate must
resemble the person followed (cosine >= ``min_similarity``) when several faces are in the frame or the face was
missing in the frame before, and after a miss a face that resembles the person is taken wherever it comes back,
while another person's face near the last position is not. A frame that starts a new shot (a cut, see
:mod:`retarget.video.shots`) is treated like a face after a miss: position says nothing across a cut, so the person
is taken wherever they are in the new shot and another person where ours was is not. A frame without an acceptable
face is marked missing. :meth:`FaceTracker.finish` fills gaps of at most ``max_gap`` frames by interpolating
keypoints linearly between the neighbouring detections of the same shot; longer gaps, gaps across a cut and the
clip's ends stay missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .detection import Face

__all__ = ["FaceTrack", "FaceTracker", "fill_keypoint_gaps", "select_face"]


def select_face(
    faces: Sequence[Face],
    face_index: int | None = None,
    embeddings: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    min_similarity: float = 0.3,
) -> int | None:
    """Index of the face to use among the detections of one image.

    Args:
        faces: detections, largest first.
        face_index: position in ``faces`` to take when there is no reference (0 = largest).
        embeddings: float [len(faces), 512] unit-norm identity embeddings of ``faces`` (needed with ``reference``).
        reference: float [512] unit-norm embedding of the wanted person.
        min_similarity: cosine similarity the reference match must reach.

    Returns:
        The index, or ``None`` when there is no face, ``face_index`` is out of range, or no face matches the
        reference well enough.
    """
    if len(faces) == 0:
        return None
    if reference is not None:
        if embeddings is None or len(embeddings) != len(faces):
            raise ValueError("selecting by a reference photo needs one embedding per detected face")
        similarity = np.asarray(embeddings, dtype=np.float32) @ np.asarray(reference, dtype=np.float32)
        best = int(np.argmax(similarity))
        return best if similarity[best] >= min_similarity else None
    index = 0 if face_index is None else int(face_index)
    return index if 0 <= index < len(faces) else None


@dataclass
class FaceTrack:
    """One person's face over T frames.

    Attributes:
        keypoints: float32 [T, 5, 2] pixels; NaN where the face is missing.
        boxes: float32 [T, 4] ``x1, y1, x2, y2`` pixels; NaN where missing (interpolated like keypoints in gaps).
        scores: float32 [T] detector scores; 0 where not detected.
        detected: bool [T], a detection was assigned in that frame.
        filled: bool [T], keypoints were interpolated across a short gap.
    """

    keypoints: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    detected: np.ndarray
    filled: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool [T]: the face has keypoints in that frame (detected or filled)."""
        return self.detected | self.filled

    def __len__(self) -> int:
        return len(self.detected)


def fill_keypoint_gaps(values: np.ndarray, known: np.ndarray, max_gap: int,
                       cuts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate runs of at most ``max_gap`` unknown frames between two known frames of the same shot.

    Args:
        values: float [T, ...] per-frame values (keypoints [T, 5, 2], boxes [T, 4]).
        known: bool [T].
        max_gap: longest run of unknown frames that is filled.
        cuts: optional bool [T], True where a frame starts a new shot; a gap with a cut between its two known
            frames (the later one included) is not filled.

    Returns:
        ``(filled_values, filled_mask)``: a float32 copy with the short gaps interpolated (other unknown frames
        untouched), and bool [T] marking the frames that were filled.
    """
    values = np.array(values, dtype=np.float32, copy=True)
    known = np.asarray(known, dtype=bool)
    filled = np.zeros(len(known), dtype=bool)
    indices = np.flatnonzero(known)
    shot = np.cumsum(np.asarray(cuts, dtype=bool)) if cuts is not None else np.zeros(len(known), np.int64)
    for before, after in zip(indices[:-1], indices[1:]):
        gap = after - before - 1
        if 0 < gap <= max_gap and shot[before] == shot[after]:
            for frame in range(before + 1, after):
                weight = (frame - before) / (after - before)
                values[frame] = (1.0 - weight) * values[before] + weight * values[after]
                filled[frame] = True
    return values, filled


class FaceTracker:
    """Follows one face through a clip, frame by frame; call :meth:`update` per frame, then :meth:`finish`.

    Args:
        face_index: which face to start with when there is no reference (0 = largest).
        reference: float [512] unit-norm embedding of the person to follow (from a photo), or ``None``.
        max_jump: largest accepted move between consecutive frames, in face sizes.
        min_similarity: cosine similarity a candidate must reach against the reference / the track's identity
            (only when embeddings are passed to :meth:`update`).
        max_gap: longest run of missing frames filled by interpolation in :meth:`finish`.
        lost_after: frames without the face after which it is re-selected from scratch.
    """

    def __init__(
        self,
        face_index: int | None = None,
        reference: np.ndarray | None = None,
        max_jump: float = 0.5,
        min_similarity: float = 0.3,
        max_gap: int = 5,
        lost_after: int = 15,
    ) -> None:
        self.face_index = face_index
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float32)
        self.max_jump = float(max_jump)
        self.min_similarity = float(min_similarity)
        self.max_gap = int(max_gap)
        self.lost_after = int(lost_after)
        self._keypoints: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []
        self._scores: list[float] = []
        self._cuts: list[bool] = []
        self._last: Face | None = None
        self._missing_for = 0
        self._identity: np.ndarray | None = None

    def _identity_target(self) -> np.ndarray | None:
        return self.reference if self.reference is not None else self._identity

    def _choose(self, faces: Sequence[Face], embeddings: Callable[[], np.ndarray | None], given: bool,
                cut: bool) -> int | None:
        target = self._identity_target()
        if self._last is None or self._missing_for >= self.lost_after:
            found = embeddings() if target is not None else None
            if found is not None:
                return select_face(faces, embeddings=found, reference=target, min_similarity=self.min_similarity)
            return select_face(faces, face_index=self.face_index)
        distances = np.array([np.linalg.norm(face.center - self._last.center) / self._last.size for face in faces])
        # Identity is computed only where position could pick the wrong person (used whenever it was given):
        # several faces, or a face that comes back after a miss or after a cut (maybe another person where ours
        # was, or ours somewhere else).
        broken = self._missing_for > 0 or cut
        asked = given or len(faces) > 1 or broken
        found = embeddings() if target is not None and asked else None
        if found is None:
            acceptable = distances <= self.max_jump * (1.0 + 0.5 * self._missing_for)
            cost = distances.copy()
        else:
            similarity = np.asarray(found, dtype=np.float32) @ target
            acceptable = similarity >= self.min_similarity
            if not broken:  # followed without a break: near its last position too
                acceptable &= distances <= self.max_jump
                cost = distances - similarity
            else:  # after a miss or a cut, wherever it is: the most similar face
                cost = -similarity
        if not acceptable.any():
            return None
        cost = np.where(acceptable, cost, np.inf)
        return int(np.argmin(cost))

    def update(self, faces: Sequence[Face], embeddings: np.ndarray | None = None,
               embed: Callable[[], np.ndarray] | None = None, cut: bool = False) -> Face | None:
        """Assign this frame's face.

        Args:
            faces: this frame's detections (largest first).
            embeddings: optional float [len(faces), 512] unit-norm identity embeddings of ``faces``.
            embed: optional, instead of ``embeddings``: a function that computes them, called at most once and
                only when identity decides (the first face of the track, to know its person; several faces; a
                face after a miss or a cut), so that a clip with one face and no cut pays for one embedding.
            cut: this frame starts a new shot (see :class:`retarget.video.shots.ShotChanges`): with identity at
                hand, the person is taken by identity wherever they are, not by position; gaps are not filled
                across it. Without identity, position still decides.

        Returns:
            The tracked face in this frame, or ``None`` (frame marked missing).
        """
        computed: list[np.ndarray | None] = [embeddings]

        def lazy() -> np.ndarray | None:
            if computed[0] is None and embed is not None and len(faces):
                computed[0] = np.asarray(embed(), dtype=np.float32)
            return computed[0]

        self._cuts.append(bool(cut))
        index = self._choose(faces, lazy, embeddings is not None, bool(cut)) if len(faces) else None
        if index is None:
            self._missing_for += 1
            self._keypoints.append(np.full((5, 2), np.nan, np.float32))
            self._boxes.append(np.full((4,), np.nan, np.float32))
            self._scores.append(0.0)
            return None
        face = faces[index]
        found = computed[0] if self._identity is not None else lazy()  # the track's person, from its first face
        if found is not None:
            embedding = np.asarray(found[index], dtype=np.float32)
            mixed = embedding if self._identity is None else 0.9 * self._identity + 0.1 * embedding
            self._identity = mixed / max(float(np.linalg.norm(mixed)), 1e-12)
        self._last = face
        self._missing_for = 0
        self._keypoints.append(np.asarray(face.keypoints, np.float32))
        self._boxes.append(np.asarray(face.bbox, np.float32))
        self._scores.append(float(face.score))
        return face

    def finish(self) -> FaceTrack:
        """The track so far, with gaps of at most ``max_gap`` frames filled."""
        detected = np.array([not np.isnan(points).any() for points in self._keypoints], dtype=bool)
        keypoints = np.stack(self._keypoints) if self._keypoints else np.zeros((0, 5, 2), np.float32)
        boxes = np.stack(self._boxes) if self._boxes else np.zeros((0, 4), np.float32)
        cuts = np.asarray(self._cuts, dtype=bool)
        keypoints, filled = fill_keypoint_gaps(keypoints, detected, self.max_gap, cuts)
        boxes, _ = fill_keypoint_gaps(boxes, detected, self.max_gap, cuts)
        return FaceTrack(keypoints, boxes, np.asarray(self._scores, np.float32), detected, filled)
