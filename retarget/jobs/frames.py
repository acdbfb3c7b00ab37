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
    it, else the bundled MTCNN), ``identity`` (``antelopev2/arcface.onnx``), ``expressions`` (``smirk/SMIRK_em1.pt``,
    fed ``channel_order`` "rgb" or "bgr", see :class:`~retarget.faces.expressions.ExpressionExtractor`).
    Missing or broken files raise :class:`~retarget.errors.WeightsError` when first needed."""

    def __init__(self, models_dir: Path, device: str | None = None, batch_size: int = 32, channel_order: str = "rgb"):
        self.models_dir = Path(models_dir)
        self.device = device
        self.batch_size = batch_size
        self.channel_order = channel_order
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
                                                                    batch_size=self.batch_size,
                                                                    channel_order=self.channel_order)
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

    def motion(self, metadata: dict[str, str] | None = None, frames: tuple[int, int] | None = None) -> MotionTrack:
        """The raw expression track (requires a scan with expressions); with ``frames`` (``[first, stop)``) only
        those frames, their times counted from the first of them."""
        if self.expressions is None:
            raise ValueError("this scan did not read expressions")
        lo, hi = frames if frames is not None else (0, len(self.valid))
        return MotionTrack(self.expressions[lo:hi], self.valid[lo:hi], self.times[lo:hi] - self.times[lo],
                           self.rate, metadata=metadata or {})

    def smoothed_keypoints(self, cutoff_hz: float = 3.0) -> np.ndarray:
        """Keypoints with zero-lag Kalman/RTS smoothing over time (steadier paste-back); invalid frames unchanged."""
        if self.valid.sum() < 2:
            return self.keypoints
        flat = self.keypoints.reshape(len(self.keypoints), 10)
        return kalman_rts(flat, self.valid, self.times, cutoff_hz=cutoff_hz).reshape(-1, 5, 2)


def scan_clip(reader: VideoReader, models: FaceModels, face_index: int = 0, *, expressions: bool = True,
              identity: bool = False, chunk_size: int = 64, progress: bool = True,
              reference: FaceReference | None = None, frames: tuple[int, int] | None = None) -> ClipScan:
    """Stream ``reader``'s clip once: follow one face, read its expressions (batched per chunk) and, with
    ``identity``, a robust mean ArcFace embedding over up to :data:`IDENTITY_SAMPLES` frames. The face is
    followed with :class:`~retarget.faces.tracking.FaceTracker`: ``reference`` (a photo's embedding) picks the
    person by ArcFace similarity, else ``face_index`` picks among several by size. ``frames`` (``[first, stop)``)
    limits the scan to part of the clip; the arrays still cover the whole clip, invalid outside the part.

    Raises :class:`NoFaceError` when no frame has the face.
    """
    from tqdm.auto import tqdm

    from retarget.faces.identity import robust_mean_embedding

    info = reader.info
    n = info.frame_count
    lo, hi = frames if frames is not None else (0, n)
    times = info.frame_times()
    keypoints = np.zeros((n, 5, 2), np.float32)
    valid = np.zeros(n, bool)
    values = np.zeros((n, DIM), np.float32) if expressions else None
    embeddings: list[np.ndarray] = []
    step = max(1, (hi - lo) // IDENTITY_SAMPLES)
    follower = FaceTracker(face_index=face_index,
                           reference=None if reference is None else reference.embedding)
    bar = tqdm(total=hi - lo, desc=f"faces {info.path.name}", unit="frame", disable=not progress, leave=False)
    start, end = _time_window(info, lo)[0], (None if hi >= n else float(times[hi]))
    for chunk in reader.iter_chunks(chunk_size, None if lo == 0 else start, end):
        rows, crops = [], []
        for frame, index in zip(chunk.frames, chunk.indices):
            detections = models.detector.detect(frame)
            candidates = None
            if reference is not None and detections:
                candidates = models.identity.embed(frame, np.stack([d.keypoints for d in detections]))
            face = follower.update(detections, candidates)
            if face is None:
                continue
            keypoints[index], valid[index] = face.keypoints, True
            rows.append(int(index))
            crops.append(frame)
            if identity and (index - lo) % step == 0:
                embeddings.append(models.identity.embed(frame, face.keypoints))
        if expressions and rows:
            values[rows] = models.expressions.extract(crops, keypoints[rows])
        bar.update(len(chunk))
    bar.close()
    if not valid.any():
        if reference is not None:
            which = f"the person in {reference.path.name} (--face-reference)"
        elif face_index:
            which = f"face number {face_index + 1} (--face-index {face_index})"
        else:
            which = "a face"
        raise NoFaceError(f"{info.path}: no frame shows {which}")
    if identity and not embeddings:
        first = int(np.flatnonzero(valid)[0])
        for frame, _, index in reader.iter_frames(*_time_window(info, first)):
            embeddings.append(models.identity.embed(frame, keypoints[index]))
    mean_identity = robust_mean_embedding(np.stack(embeddings)) if identity else None
    return ClipScan(keypoints, valid, info.frame_times(), info.frame_rate, values, mean_identity)


@dataclass(frozen=True)
class FaceReference:
    """The person to follow, from a photo: ``path`` and its largest face's ArcFace ``embedding`` ``[512]``."""

    path: Path
    embedding: np.ndarray


def face_reference(path, models: FaceModels) -> FaceReference:
    """Read a ``--face-reference`` photo (largest face); one-line errors for non-images and photos without a face."""
    image, face = photo_face(path, models, 0)
    return FaceReference(Path(path), models.identity.embed(image, face.keypoints))


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
