"""Per-frame face plumbing shared by the jobs: the face models, the streaming scan of a clip (the followed
face's keypoints, expressions, identity), decoding a span of frames, and photo faces.

Memory: a scan holds one chunk of decoded frames at a time plus per-frame numbers (10 keypoint floats and 55
expression values per frame), so it does not grow with the picture size or, beyond those numbers, the length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from retarget.errors import NoFaceError
from retarget.faces.detection import Face, load_detector
from retarget.faces.tracking import FaceTracker
from retarget.motion.smoothing import kalman_rts
from retarget.motion.track import DIM, MotionTrack
from retarget.video.reader import VideoReader

log = logging.getLogger(__name__)

#: Frames whose identity embedding goes into a clip's mean identity (evenly spread over the clip).
IDENTITY_SAMPLES = 32


class FaceModels:
    """The face models of one session, each loaded on first use: ``detector`` (SCRFD when the models folder has
    it, else the bundled MTCNN), ``identity`` (``antelopev2/arcface.onnx``), ``expressions`` (``smirk/SMIRK_em1.pt``).
    Missing or broken files raise :class:`~retarget.errors.WeightsError` when first needed."""

    def __init__(self, models_dir: Path, device: str | None = None, batch_size: int = 32):
        self.models_dir = Path(models_dir)
        self.device = device
        self.batch_size = batch_size
        self._detector = self._identity = self._expressions = None

    @property
    def detector(self):
        if self._detector is None:
            self._detector = load_detector(self.models_dir, device=self.device)
        return self._detector

    @property
    def identity(self):
        if self._identity is None:
            from retarget.faces.identity import ARCFACE_FILENAME, IdentityEncoder

            self._identity = IdentityEncoder(self.models_dir / "antelopev2" / ARCFACE_FILENAME, device=self.device)
        return self._identity

    @property
    def expressions(self):
        if self._expressions is None:
            from retarget.faces.expressions import ExpressionExtractor

            self._expressions = ExpressionExtractor.from_models_dir(self.models_dir, device=self.device,
                                                                    batch_size=self.batch_size)
        return self._expressions


@dataclass
class ClipScan:
    """What one pass over a clip found.

    ``keypoints`` float32 ``[N, 5, 2]`` (zeros where ``valid`` is False), ``valid`` bool ``[N]``, ``times`` float64
    ``[N]`` seconds from the first frame, ``rate`` exact, ``expressions`` float32 ``[N, 55]`` or None, ``identity``
    float32 ``[512]`` (robust mean over sampled frames) or None.
    """

    keypoints: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    rate: Fraction
    expressions: np.ndarray | None = None
    identity: np.ndarray | None = None

    def motion(self, metadata: dict[str, str] | None = None) -> MotionTrack:
        """The raw expression track (requires a scan with expressions)."""
        if self.expressions is None:
            raise ValueError("this scan did not read expressions")
        return MotionTrack(self.expressions, self.valid, self.times, self.rate, metadata=metadata or {})

    def smoothed_keypoints(self, cutoff_hz: float = 3.0) -> np.ndarray:
        """Keypoints with zero-lag Kalman/RTS smoothing over time (steadier paste-back); invalid frames unchanged."""
        if self.valid.sum() < 2:
            return self.keypoints
        flat = self.keypoints.reshape(len(self.keypoints), 10)
        return kalman_rts(flat, self.valid, self.times, cutoff_hz=cutoff_hz).reshape(-1, 5, 2)


def scan_clip(reader: VideoReader, models: FaceModels, face_index: int = 0, *, expressions: bool = True,
              identity: bool = False, chunk_size: int = 64, progress: bool = True) -> ClipScan:
    """Stream ``reader``'s clip once: follow one face, read its expressions (batched per chunk) and, with
    ``identity``, a robust mean ArcFace embedding over up to :data:`IDENTITY_SAMPLES` frames. The face is
    followed with :class:`~retarget.faces.tracking.FaceTracker` (``face_index`` picks it among several).

    Raises :class:`NoFaceError` when no frame has the face.
    """
    from tqdm.auto import tqdm

    from retarget.faces.identity import robust_mean_embedding

    info = reader.info
    n = info.frame_count
    keypoints = np.zeros((n, 5, 2), np.float32)
    valid = np.zeros(n, bool)
    values = np.zeros((n, DIM), np.float32) if expressions else None
    embeddings: list[np.ndarray] = []
    step = max(1, n // IDENTITY_SAMPLES)
    follower = FaceTracker(face_index=face_index)
    bar = tqdm(total=n, desc=f"faces {info.path.name}", unit="frame", disable=not progress, leave=False)
    for chunk in reader.iter_chunks(chunk_size):
        rows, frames = [], []
        for frame, index in zip(chunk.frames, chunk.indices):
            face = follower.update(models.detector.detect(frame))
            if face is None:
                continue
            keypoints[index], valid[index] = face.keypoints, True
            rows.append(int(index))
            frames.append(frame)
            if identity and index % step == 0:
                embeddings.append(models.identity.embed(frame, face.keypoints))
        if expressions and rows:
            values[rows] = models.expressions.extract(frames, keypoints[rows])
        bar.update(len(chunk))
    bar.close()
    if not valid.any():
        which = f"face number {face_index + 1} (--face-index {face_index})" if face_index else "a face"
        raise NoFaceError(f"{info.path}: no frame shows {which}")
    if identity and not embeddings:
        first = int(np.flatnonzero(valid)[0])
        for frame, _, index in reader.iter_frames(*_time_window(info, first)):
            embeddings.append(models.identity.embed(frame, keypoints[index]))
    mean_identity = robust_mean_embedding(np.stack(embeddings)) if identity else None
    return ClipScan(keypoints, valid, info.frame_times(), info.frame_rate, values, mean_identity)


def _time_window(info, index: int) -> tuple[float, float | None]:
    """(start, end) seconds that select exactly frame ``index`` for :meth:`VideoReader.iter_frames`."""
    times = info.frame_times()
    return float(times[index]), (float(times[index + 1]) if index + 1 < len(times) else None)


def frames_of_span(reader: VideoReader, start: int, stop: int) -> np.ndarray:
    """Decoded frames ``[start, stop)`` of the clip: uint8 ``[stop - start, H, W, 3]`` (seeks to ``start``, then
    stops decoding after the last frame wanted)."""
    times = reader.info.frame_times()
    begin = None if start == 0 else float(times[start - 1] + times[start]) / 2  # midway: immune to rounding
    frames = []
    for frame, _, index in reader.iter_frames(begin, None):
        if index >= stop:
            break
        frames.append(frame)
        if index == stop - 1:
            break
    if len(frames) != stop - start:
        raise RuntimeError(f"{reader.path}: decoded {len(frames)} frames for frames {start}..{stop - 1}")
    return np.stack(frames)


def photo_face(path, models: FaceModels, face_index: int = 0) -> tuple[np.ndarray, Face]:
    """Load a photo (any image PIL reads, EXIF orientation applied) and detect its face number ``face_index``.

    Raises :class:`~retarget.errors.InputError` for a file that is not an image and :class:`NoFaceError` for a
    photo without (that many) faces.
    """
    from retarget.faces.image_io import load_image

    image = load_image(path)
    faces = models.detector.detect(image)
    if len(faces) <= face_index:
        found = f"only {len(faces)} face(s)" if faces else "no face"
        raise NoFaceError(f"{path}: {found} found in the photo")
    return image, faces[face_index]
