"""Per-frame face plumbing shared by the jobs: the face models, the streaming scan of a clip (the followed
face's keypoints, expressions, identity), decoding a span of frames, and photo faces.

Memory: a scan holds one chunk of decoded frames at a time plus per-frame numbers (10 keypoint floats and 55
expression values per frame), so it does not grow with the length beyond those numbers; the chunk's length is capped
by a byte budget (see :func:`retarget.jobs.common.chunk_frames`), so it does not grow with the picture size either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from retarget.errors import InputError, NoFaceError
from retarget.faces.detection import Face
from retarget.faces.models import FaceModels
from retarget.faces.tracking import FaceTracker, fill_keypoint_gaps
from retarget.jobs.common import MEMORY_BUDGET_GIB, chunk_frames, picture_bytes
from retarget.jobs.stage_times import StageTimes
from retarget.jobs.stages import CHUNKS_IN_FLIGHT, run_stages
from retarget.motion.smoothing import kalman_rts
from retarget.motion.track import DIM, MotionTrack
from retarget.video.reader import VideoReader
from retarget.video.shots import ShotChanges, shot_ranges

log = logging.getLogger(__name__)

#: Frames whose identity embedding goes into a clip's mean identity (evenly spread over the clip).
IDENTITY_SAMPLES = 32

#: Longest run of frames without a detection, between two detections, that a scan fills by interpolation.
MAX_FILLED_GAP = 5


@dataclass
class ClipScan:
    """What one pass over a clip found.

    ``detected`` bool ``[N]``: the detector found the followed face in that frame. ``valid`` bool ``[N]``: the
    frame has the face, detected or filled: ``detected`` plus the frames of gaps of at most
    :data:`MAX_FILLED_GAP` frames between two detections (filled frames are ``valid & ~detected``). Longer gaps,
    frames before the first and after the last detection, and frames outside the scanned part are not valid.
    ``keypoints`` float32 ``[N, 5, 2]`` pixels (detected, linearly interpolated in filled frames, zeros where
    ``valid`` is False), ``times`` float64 ``[N]`` seconds from the first frame, ``rate`` exact, ``expressions``
    float32 ``[N, 55]`` or None (SMIRK values of the detected frames, linearly interpolated between the
    neighbouring detections in filled frames, zeros elsewhere), ``identity`` float32 ``[512]`` (robust mean over
    sampled detected frames) or None. ``frames``: the decoded frames ``[first, first + len(frames))`` kept by a scan
    with ``keep_frames`` (uint8 ``[M, H, W, 3]``), else None; see :meth:`frames_of_span`. ``cuts`` bool ``[N]``:
    the frame starts a new shot (see :mod:`retarget.video.shots`; no gap is filled and no keypoint smoothed across
    one), or None (no cut known).
    """

    keypoints: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    rate: Fraction
    expressions: np.ndarray | None = None
    identity: np.ndarray | None = None
    detected: np.ndarray | None = None
    frames: np.ndarray | None = None
    first: int = 0
    cuts: np.ndarray | None = None

    def __post_init__(self):
        if self.detected is None:
            self.detected = self.valid.copy()

    def frames_of_span(self, reader: VideoReader, start: int, stop: int, times: StageTimes | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` of the clip, uint8 ``[stop - start, H, W, 3]``: a view of the kept
        :attr:`frames` when they cover the span (no decode; the caller may write into it, each span is its own),
        else decoded again with :func:`frames_of_span` (timed as ``decode`` in ``times``)."""
        if self.frames is not None and self.first <= start and stop <= self.first + len(self.frames):
            return self.frames[start - self.first:stop - self.first]
        if times is None:
            return frames_of_span(reader, start, stop)
        with times.stage("decode"):
            return frames_of_span(reader, start, stop)

    @property
    def filled(self) -> np.ndarray:
        """bool ``[N]``: frames whose keypoints (and expressions) were interpolated across a short gap."""
        return self.valid & ~self.detected

    def motion(self, metadata: dict[str, str] | None = None, frames: tuple[int, int] | None = None,
               filled: bool = True) -> MotionTrack:
        """The expression track (requires a scan with expressions); with ``frames`` (``[first, stop)``) only
        those frames, their times counted from the first of them. ``filled`` False marks only the detected frames
        valid (a motion file records measurements; the short gaps' values, read at interpolated keypoints, stay
        but count as missing, and the track's ``filled`` marks them)."""
        if self.expressions is None:
            raise ValueError("this scan did not read expressions")
        lo, hi = frames if frames is not None else (0, len(self.valid))
        valid = self.valid if filled else self.detected
        return MotionTrack(self.expressions[lo:hi], valid[lo:hi], self.times[lo:hi] - self.times[lo],
                           self.rate, metadata=metadata or {}, filled=None if filled else self.filled[lo:hi],
                           cuts=None if self.cuts is None else self.cuts[lo:hi])

    def missing_face_note(self, name: str, frames: tuple[int, int] | None = None, filled: bool = True) -> str | None:
        """One line naming the frames of ``[first, stop)`` (default: all) that do not have the followed face
        (``valid`` False: after gap filling; with ``filled`` False, ``detected`` False), e.g.
        ``"clip.mp4: no face in 38 of 90 frames (0.87-2.10 s)"`` (see :func:`missing_face_note`)."""
        return missing_face_note(name, ~(self.valid if filled else self.detected), self.times, self.rate, frames)

    def shots(self) -> list[tuple[int, int]]:
        """``[start, stop)`` frame ranges of the shots, in order (see :func:`~retarget.video.shots.shot_ranges`)."""
        return shot_ranges(self.cuts, len(self.valid))

    def smoothed_keypoints(self, cutoff_hz: float = 3.0) -> np.ndarray:
        """Keypoints with zero-lag Kalman/RTS smoothing over time (steadier paste-back), each shot on its own (a
        face does not glide across a cut): the detected frames are the measurements, every valid frame (filled
        ones included) of a shot with two detections or more gets the smoothed estimate, other frames are
        unchanged."""
        smoothed = self.keypoints.copy()
        for start, stop in self.shots():
            if self.detected[start:stop].sum() < 2:
                continue
            flat = self.keypoints[start:stop].reshape(stop - start, 10)
            smoothed[start:stop] = kalman_rts(flat, self.detected[start:stop], self.times[start:stop],
                                              cutoff_hz=cutoff_hz).reshape(-1, 5, 2)
        return np.where(self.valid[:, None, None], smoothed, self.keypoints).astype(np.float32)


def scan_clip(reader: VideoReader, models: FaceModels, face_index: int = 0, *, expressions: bool = True,
              identity: bool = False, chunk_size: int = 64, progress: bool = True,
              reference: FaceReference | None = None, frames: tuple[int, int] | None = None,
              memory_budget: float = MEMORY_BUDGET_GIB, keep_frames: bool = False, overlap: bool = True,
              check: Callable[[], None] | None = None, times: StageTimes | None = None) -> ClipScan:
    """Stream ``reader``'s clip once, one chunk of decoded frames at a time (``chunk_size`` frames, fewer where
    :data:`~retarget.jobs.stages.CHUNKS_IN_FLIGHT` chunks would exceed ``memory_budget`` GiB, see
    :func:`~retarget.jobs.common.chunk_frames`): follow one face, read its expressions (batched per chunk) and,
    with ``identity``, a robust mean ArcFace embedding over up to :data:`IDENTITY_SAMPLES` detected frames. The
    face is followed with :class:`~retarget.faces.tracking.FaceTracker`: ``reference`` (a photo's embedding) picks
    the person by ArcFace similarity, else ``face_index`` picks among several by size and the person of the face
    picked first is followed by ArcFace similarity wherever position alone could mistake another person for them
    (several faces in a frame, a face after a miss or a cut: frames that start a new shot are found with
    :class:`~retarget.video.shots.ShotChanges` and returned in :attr:`ClipScan.cuts`). ``frames``
    (``[first, stop)``) limits the scan to part of the clip; the arrays still cover the whole clip, invalid outside
    the part.

    Stages (see :func:`~retarget.jobs.stages.run_stages`): with ``overlap`` the next chunk is decoded, its faces
    detected (:meth:`~retarget.faces.detection.Detector.detect_many`, batched where the detector allows) and
    followed on a prefetch thread while this thread reads the current chunk's expressions (SMIRK) and identity
    samples (ArcFace); the results do not depend on ``overlap``. ``check`` is called on this thread after each
    chunk (the session's :meth:`~retarget.jobs.session.RenderSession.check_loading`: a failed background load
    stops the scan there). ``times`` records the decode, detect, smirk and arcface busy times. ``keep_frames``:
    keep the decoded frames ``[first, stop)`` in :attr:`ClipScan.frames` for the render (decode once; the job
    decides by :func:`~retarget.jobs.common.keep_scanned_frames`, and the kept bytes are then taken from the
    budget of the scan's chunks).

    Gaps of at most :data:`MAX_FILLED_GAP` frames between two detections of the same shot are filled (see
    :class:`ClipScan`):
    keypoints and expressions are interpolated linearly between the neighbouring detections. The expressions are
    interpolated rather than read by SMIRK from crops at the interpolated keypoints: the detector missed the face
    in those frames (occlusion, blur, a frame without the face), so such a crop need not show the face and SMIRK's
    values for it would be arbitrary, while the neighbours' values are measurements of the same face a few
    frames apart. (It also needs no second decode of frames whose gap is only known to be short, and filled, once
    the next detection arrives, possibly in a later chunk.)

    Raises :class:`NoFaceError` when no frame has the face.
    """
    from tqdm.auto import tqdm

    from retarget.faces.identity import robust_mean_embedding

    times = times if times is not None else StageTimes("scan")
    info = reader.info
    n = info.frame_count
    lo, hi = frames if frames is not None else (0, n)
    clip_times = info.frame_times()
    keypoints = np.zeros((n, 5, 2), np.float32)
    detected = np.zeros(n, bool)
    cuts = np.zeros(n, bool)
    shots = ShotChanges()
    values = np.zeros((n, DIM), np.float32) if expressions else None
    embeddings: list[np.ndarray] = []
    step = max(1, (hi - lo) // IDENTITY_SAMPLES)
    follower = FaceTracker(face_index=face_index, reference=None if reference is None else reference.embedding,
                           max_gap=MAX_FILLED_GAP)
    bar = tqdm(total=hi - lo, desc=f"faces {info.path.name}", unit="frame", disable=not progress, leave=False)
    start, end = _time_window(info, lo)[0], (None if hi >= n else float(clip_times[hi]))
    picture = picture_bytes(info.width, info.height)
    kept = np.empty((hi - lo, info.height, info.width, 3), np.uint8) if keep_frames else None
    chunk_size = chunk_frames(picture, chunk_size, memory_budget, picture, in_flight=CHUNKS_IN_FLIGHT,
                              reserved=0 if kept is None else kept.nbytes)

    def follow(chunk) -> tuple[list[int], list[np.ndarray]]:
        """Prefetch thread: detect and follow the face through one chunk; the rows and frames found."""
        if kept is not None:
            kept[chunk.indices[0] - lo:chunk.indices[-1] + 1 - lo] = chunk.frames
        detector = models.detector
        with times.stage("detect"):
            if hasattr(detector, "detect_many"):
                found = detector.detect_many(chunk.frames)
            else:  # any object with ``detect`` (one frame) will do
                found = [detector.detect(frame) for frame in chunk.frames]
            for frame, index in zip(chunk.frames, chunk.indices):
                cuts[index] = shots.is_cut(frame)
        rows, crops = [], []
        for frame, index, detections in zip(chunk.frames, chunk.indices, found):
            def embed(frame=frame, detections=detections) -> np.ndarray:
                with times.stage("arcface"):
                    return models.identity.embed(frame, np.stack([d.keypoints for d in detections]))

            candidates = embed() if reference is not None and detections else None  # every frame: the photo's person
            face = follower.update(detections, candidates, embed=embed, cut=bool(cuts[index]))
            if face is None:
                continue
            keypoints[index], detected[index] = face.keypoints, True
            rows.append(int(index))
            crops.append(frame)
        return rows, crops

    def read(chunk, found) -> None:
        """This thread: the chunk's expressions and identity samples."""
        rows, crops = found
        if expressions and rows:
            with times.stage("smirk"):
                values[rows] = models.expressions.extract(crops, keypoints[rows])
        if identity:
            with times.stage("arcface"):
                for frame, index in zip(crops, rows):
                    if (index - lo) % step == 0:
                        embeddings.append(models.identity.embed(frame, keypoints[index]))
        if check is not None:
            check()

    chunks = _timed(reader.iter_chunks(chunk_size, None if lo == 0 else start, end), times, "decode")
    run_stages(chunks, follow, read, done=lambda chunk: bar.update(len(chunk)), overlap=overlap)
    bar.close()
    if not detected.any():
        if reference is not None:
            which = f"the person in {reference.path.name} (--face-reference)"
        elif face_index:
            which = f"face number {face_index + 1} (--face-index {face_index})"
        else:
            which = "a face"
        raise NoFaceError(f"{info.path}: no frame shows {which}")
    if identity and not embeddings:
        first = int(np.flatnonzero(detected)[0])
        for frame, _, index in reader.iter_frames(*_time_window(info, first)):
            embeddings.append(models.identity.embed(frame, keypoints[index]))
    mean_identity = robust_mean_embedding(np.stack(embeddings)) if identity else None
    keypoints, filled = fill_keypoint_gaps(keypoints, detected, MAX_FILLED_GAP, cuts)
    if expressions:
        values, _ = fill_keypoint_gaps(values, detected, MAX_FILLED_GAP, cuts)
    if filled.any():
        log.info("%s: the face was missed in %d frame(s) of short gaps; filled by interpolation",
                 info.path.name, int(filled.sum()))
    return ClipScan(keypoints, detected | filled, info.frame_times(), info.frame_rate, values, mean_identity,
                    detected, frames=kept, first=lo, cuts=cuts)


def _timed(iterable: Iterable, times: StageTimes, stage: str) -> Iterator:
    """The items of ``iterable``, the time spent producing each added to ``stage``'s busy time."""
    iterator = iter(iterable)
    while True:
        with times.stage(stage):
            item = next(iterator, _NONE)
        if item is _NONE:
            return
        yield item


_NONE = object()


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
    stops decoding after the last frame wanted). Decodes into one array allocated for the span (no second copy)."""
    info = reader.info
    times = info.frame_times()
    begin = None if start == 0 else float(times[start - 1] + times[start]) / 2  # midway: immune to rounding
    frames = np.empty((stop - start, info.height, info.width, 3), np.uint8)
    count = 0
    for frame, _, index in reader.iter_frames(begin, None):
        if index >= stop:
            break
        if frame.shape != frames.shape[1:]:
            raise InputError(f"{reader.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, the clip is "
                             f"{info.width}x{info.height} (the picture size changes inside the clip)")
        if count < len(frames):
            frames[count] = frame
        count += 1
        if index == stop - 1:
            break
    if count != stop - start:
        raise RuntimeError(f"{reader.path}: decoded {count} frames for frames {start}..{stop - 1}")
    return frames


def frame_spans(selected: np.ndarray, times: np.ndarray, rate, frames: tuple[int, int] | None = None
                ) -> tuple[int, str]:
    """How many frames of ``[first, stop)`` (default: all) are ``selected`` (bool ``[N]``), and their time spans as
    text, at most three (``"0.87-2.10 s, 3.00-3.20 s"``, then ``" and 2 more span(s)"``; ``times``: seconds from
    the clip's first frame; each span from the first selected frame's time to the end of the last, the last frame
    lasting ``1 / rate``)."""
    lo, hi = frames if frames is not None else (0, len(selected))
    selected = np.asarray(selected, bool)[lo:hi]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], selected.astype(np.int8), [0]])))
    spans = [(lo + a, lo + b) for a, b in zip(edges[::2], edges[1::2])]  # [first, stop) clip frame numbers
    period = float(1 / rate) if rate else 0.0

    def end_time(stop: int) -> float:
        return float(times[stop]) if stop < len(times) else float(times[stop - 1]) + period

    shown = ", ".join(f"{float(times[a]):.2f}-{end_time(b):.2f} s" for a, b in spans[:3])
    more = f" and {len(spans) - 3} more span(s)" if len(spans) > 3 else ""
    return int(selected.sum()), shown + more


def missing_face_note(name: str, missing: np.ndarray, times: np.ndarray, rate, frames: tuple[int, int] | None = None
                      ) -> str | None:
    """One line naming the frames of ``[first, stop)`` (default: all) that are ``missing`` (bool ``[N]``), e.g.
    ``"clip.mp4: no face in 38 of 90 frames (0.87-2.10 s)"`` (spans as :func:`frame_spans` gives them); None when
    none is missing."""
    lo, hi = frames if frames is not None else (0, len(missing))
    count, spans = frame_spans(missing, times, rate, (lo, hi))
    return f"{name}: no face in {count} of {hi - lo} frames ({spans})" if count else None


def photo_face(path, models: FaceModels, face_index: int = 0) -> tuple[np.ndarray, Face]:
    """Load a photo (any image PIL reads, EXIF orientation applied) and detect its face number ``face_index``.

    Raises :class:`~retarget.errors.InputError` for a file that is not an image and :class:`NoFaceError` for a
    photo without (that many) faces; a photo with several faces is a warning naming the one used.
    """
    from retarget.faces.image_io import load_image

    image = load_image(path)
    faces = models.detector.detect(image)
    if len(faces) <= face_index:
        found = f"only {len(faces)} face(s)" if faces else "no face"
        raise NoFaceError(f"{path}: {found} found in the photo")
    if len(faces) > 1:  # say which one is used: the photo may show someone else beside the person meant
        which = "the largest" if face_index == 0 else f"face number {face_index + 1} by size"
        log.warning("%s: %d faces in the photo; using %s (crop the photo to pick another)",
                    Path(path).name, len(faces), which)
    return image, faces[face_index]
