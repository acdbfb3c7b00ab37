"""Evaluation of a rendered clip (``retarget eval``): identity, expression fidelity, temporal stability, coverage.

Two kinds of render are evaluated:

* a ``run`` (``--driving DRIVING --identity PHOTO``): output frame ``k`` is driving frame ``first + k``, where
  ``[first, stop)`` are the driving frames with ``start <= t < end`` (the ``--start``/``--end`` the render used;
  the whole clip by default); the output must have exactly ``stop - first`` frames.
* an ``edit`` (``--original VIDEO``): output frame ``k`` is frame ``k`` of the original clip (same frame count);
  the expressions came from SOURCE (``--driving SOURCE``, a video, or ``--motion FILE``) with source time 0 at
  ``start``, as ``edit`` lines them up; only frames in ``[start, end)`` are scored for expression.

The *reference clip* is the driving clip for a ``run`` and the original for an ``edit``: landmark jitter and
flicker of the output are compared with it. The *targets* (the expressions the render was asked for) are SMIRK's
values re-extracted from DRIVING, or the ``--motion`` file's (a ``run``: motion time = driving time; an
``edit``: motion time 0 = ``start``), prepared as the jobs prepare them (short gaps filled as the scan fills them,
``--smooth``, default ``kalman`` as in ``run``/``edit``, then every gap filled, then clamped to the published
ranges); per-part gains and ``--relative`` are not re-applied.

Per frame (the output's frames): whether the output has a face (detected by the project's detector), the identity
cosine by every judge (:func:`~retarget.evaluation.judges.identity_judges`) against the identity photo (or, for an
``edit`` without ``--identity``, against the original's face in the same frame), the squared expression error, the
flicker of the output's aligned face and of the reference's. A frame is scored where the output (and, for each
comparison, the other side) has a detected face. Memory: each clip is streamed twice (the scan, then the pixels
for identity and flicker), one chunk of frames at a time; per frame only numbers are kept.

Only the frames the scores need are decoded: of a run's driving clip, the frames ``[first, stop)`` (scanned,
smoothed and gap-filled as ``run`` scans them, a fresh face tracker at ``first``); of an edit's original, every
frame (the output has them all); of an edit's SOURCE, every frame (as ``edit`` reads it). A side-by-side render
(``run``/``edit --side-by-side``, known from its provenance record) is scored on its result panel alone, cut out
exactly (see :mod:`.panels`).

Checks that need no model (:func:`plan_evaluation`: the files, frame counts, the motion file, the photo, the
side-by-side layout) are made before any model loads or clip is scanned.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, NoFaceError, require_file
from ..faces.alignment import arcface_transform, ffhq_transform
from ..faces.image_io import load_image
from ..faces.models import FaceModels
from ..jobs.common import chunk_frames, clip_range, picture_bytes, prepared_motion
from ..jobs.frames import ClipScan, photo_face, scan_clip
from ..motion.motion_file import load_motion
from ..motion.resample import resample
from ..motion.track import DIM, PARTS, MotionTrack, channel_names, clamp_published
from ..provenance.metadata import read_provenance
from ..video.reader import VideoReader
from . import metrics
from .judges import IdentityJudge, cosine, identity_judges
from .panels import LAYOUTS, Box, output_reader, result_panel

log = logging.getLogger(__name__)

#: Side of the FFHQ-aligned face crop whose frame-to-frame change is the flicker (pixels).
FLICKER_CROP = 128


@dataclass
class EvalInputs:
    """What to evaluate. ``output``: the rendered clip; ``driving``: the driving clip (``run``) or the expression
    SOURCE video (``edit``); ``identity``: the identity photo; ``original``: the edited clip (``edit``);
    ``motion``: a motion file with the targets; ``start``/``end``: the render's range (seconds)."""

    output: Path
    driving: Path | None = None
    identity: Path | None = None
    original: Path | None = None
    motion: Path | None = None
    start: float | None = None
    end: float | None = None
    smooth: str = "kalman"

    def __post_init__(self):
        for name in ("output", "driving", "identity", "original", "motion"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, require_file(value))
        if self.original is None:
            if self.driving is None or self.identity is None:
                raise InputError("evaluating a run needs --driving and --identity (an edit: --original)")
        elif self.driving is None and self.motion is None:
            raise InputError("evaluating an edit needs the expression source: --driving SOURCE or --motion FILE")

    @property
    def mode(self) -> str:
        return "edit" if self.original is not None else "run"


@dataclass
class ClipEvaluation:
    """Per-frame numbers (over the output's ``N`` frames) and the summary (:attr:`summary`, JSON-ready).

    ``times`` float64 ``[N]``; ``output_face``/``reference_face`` bool ``[N]`` (a face detected in the output /
    in the reference clip's matching frame); ``identity`` judge name -> float32 ``[N]`` cosine (NaN where not
    scored); ``achieved``/``target`` float32 ``[N, 55]`` and ``target_valid`` bool ``[N]``; ``driving_values``
    float32 ``[N, 55]`` (the raw values the stability of the output's values is compared with) and
    ``driving_valid``; ``landmarks``/``reference_landmarks`` float32 ``[N, 10]`` (normalised 5-point shape);
    ``flicker``/``reference_flicker`` float32 ``[N]`` (change from the previous frame, grey levels, NaN where
    not both frames have a face). ``reference_index`` int ``[N]``: the reference clip's frame for each output
    frame. ``output_panel``: the part of the output's frames that was scored (a side-by-side render's result
    panel, see :mod:`.panels`), ``None`` for the whole frame.
    """

    inputs: EvalInputs
    times: np.ndarray
    reference_index: np.ndarray
    output_face: np.ndarray
    reference_face: np.ndarray
    identity: dict[str, np.ndarray]
    achieved: np.ndarray
    target: np.ndarray
    target_valid: np.ndarray
    driving_values: np.ndarray
    driving_valid: np.ndarray
    landmarks: np.ndarray
    reference_landmarks: np.ndarray
    flicker: np.ndarray
    reference_flicker: np.ndarray
    output_panel: Box | None = None
    summary: dict = field(default_factory=dict)

    @property
    def expression_valid(self) -> np.ndarray:
        """bool ``[N]``: frames scored for expression (a face in the output and a target)."""
        return self.output_face & self.target_valid

    def frame_errors(self) -> dict[str, np.ndarray]:
        """Per-frame squared error means: ``exp_mse`` over the 55 values and each part; NaN where not scored."""
        squared = (self.achieved.astype(np.float64) - self.target) ** 2
        valid = self.expression_valid
        result = {"exp_mse": np.where(valid, squared.mean(axis=1), np.nan)}
        for name, part in PARTS.items():
            result[name] = np.where(valid, squared[:, part].mean(axis=1), np.nan)
        return result


def normalised_landmarks(keypoints: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The 5-point face shape without position, size and roll: each frame's keypoints mapped by their own
    least-squares similarity onto the ArcFace 112x112 template, divided by 112 (so in face widths).

    Args:
        keypoints: float ``[N, 5, 2]`` frame pixels; valid: bool ``[N]``.

    Returns:
        float32 ``[N, 10]``, zeros where not valid. A still face gives the same row in every frame whatever its
        head motion; what changes is expression and detector noise.
    """
    result = np.zeros((len(keypoints), 10), np.float32)
    for index in np.flatnonzero(valid):
        points = keypoints[index].astype(np.float64)
        result[index] = (arcface_transform(points).to_crop(points) / 112.0).reshape(-1)
    return result


@dataclass
class _Pixels:
    embeddings: dict[str, np.ndarray]
    flicker: np.ndarray


def _window(reader: VideoReader, first: int, stop: int) -> tuple[float | None, float | None]:
    """``(start, end)`` seconds that select exactly the frames ``[first, stop)`` for ``reader.iter_chunks``."""
    times = reader.info.frame_times()
    return (None if first == 0 else float(times[first]),
            None if stop >= len(times) else float(times[stop]))


def _pixel_pass(reader: VideoReader, frames: tuple[int, int], faces: np.ndarray, judges: list[IdentityJudge],
                identity_keypoints: np.ndarray, flicker_keypoints: np.ndarray, chunk_size: int,
                memory_budget: float) -> _Pixels:
    """Second pass over the clip's frames ``[first, stop)`` = ``frames`` (only those are decoded), one chunk at a
    time; the arrays are indexed by frame - ``first``. Each judge's embedding of the face in every frame where
    ``faces`` is True (``[M, D]``, zeros elsewhere; aligned at ``identity_keypoints``) and the frame-to-frame
    change of the FFHQ-aligned :data:`FLICKER_CROP` face (``[M]``, aligned at ``flicker_keypoints``; see
    :class:`~retarget.evaluation.metrics.FlickerMeter`)."""
    info = reader.info
    first, stop = frames
    count = stop - first
    embeddings: dict[str, np.ndarray] = {}
    change = np.full(count, np.nan, np.float32)
    meter = metrics.FlickerMeter()
    picture = picture_bytes(info.width, info.height)
    chunk = chunk_frames(picture, chunk_size, memory_budget, picture)
    for part in reader.iter_chunks(chunk, *_window(reader, first, stop)):
        rows = part.indices - first
        for frame, row in zip(part.frames, rows):
            crop = ffhq_transform(flicker_keypoints[row], FLICKER_CROP).warp(frame) if faces[row] else None
            change[row] = meter.update(crop, bool(faces[row]))
        picked = [i for i, row in enumerate(rows) if faces[row]]
        if not picked:
            continue
        for judge in judges:
            values = judge.embed_many([part.frames[i] for i in picked], identity_keypoints[rows[picked]])
            if judge.name not in embeddings:
                embeddings[judge.name] = np.zeros((count, values.shape[1]), np.float32)
            embeddings[judge.name][rows[picked]] = values
    return _Pixels(embeddings, change)


def _steady_keypoints(scan: ClipScan) -> np.ndarray:
    """Keypoints for the flicker crop: smoothed over time (see :meth:`ClipScan.smoothed_keypoints`), so that
    detector noise does not move the crop."""
    return scan.smoothed_keypoints() if scan.detected.sum() >= 2 else scan.keypoints


def _part(scan: ClipScan, first: int, stop: int) -> ClipScan:
    """The frames ``[first, stop)`` of ``scan`` as a scan of their own (index 0 = frame ``first``; times stay on
    the clip's clock)."""
    return ClipScan(scan.keypoints[first:stop], scan.valid[first:stop], scan.times[first:stop], scan.rate,
                    None if scan.expressions is None else scan.expressions[first:stop],
                    detected=scan.detected[first:stop], cuts=None if scan.cuts is None else scan.cuts[first:stop])


@dataclass
class _Scanned:
    """A clip's frames ``[first, stop)``, scanned: ``reader`` (the output's may yield only its result panel) and
    ``scan`` (:func:`_part`: index 0 = frame ``first``)."""

    reader: VideoReader
    first: int
    stop: int
    scan: ClipScan


def _scan(reader: VideoReader, frames: tuple[int, int], models: FaceModels, chunk_size: int, memory_budget: float,
          progress: bool, allow_empty: bool = False, cache: dict | None = None) -> _Scanned:
    """Scan the frames ``[first, stop)`` = ``frames`` of ``reader``'s clip, and only those (the largest face
    followed from ``first``, expressions read); the same frames of the same file and panel (e.g. a clip scored
    against itself) are scanned once through ``cache``. ``allow_empty``: no face in those frames gives an
    all-invalid scan instead of :class:`NoFaceError`."""
    first, stop = frames
    key = (Path(reader.path).resolve(), getattr(reader, "box", None), first, stop)
    if cache is not None and key in cache:
        scanned = cache[key]
        if not allow_empty and not scanned.scan.detected.any():
            raise NoFaceError(f"{reader.path}: no frame shows a face")
        return scanned
    try:
        scan = scan_clip(reader, models, 0, chunk_size=chunk_size, progress=progress, memory_budget=memory_budget,
                         frames=(first, stop))
        scan = _part(scan, first, stop)
    except NoFaceError:
        if not allow_empty:
            raise
        count = stop - first
        log.warning("%s: no frame has a face", reader.path.name)
        scan = ClipScan(np.zeros((count, 5, 2), np.float32), np.zeros(count, bool),
                        reader.info.frame_times()[first:stop], reader.info.frame_rate,
                        np.zeros((count, DIM), np.float32))
    scanned = _Scanned(reader, first, stop, scan)
    if cache is not None:
        cache[key] = scanned
    return scanned


def _track(scan: ClipScan, filled: bool) -> MotionTrack:
    """The scan's expressions, times on the clip's clock: ``filled`` as ``run`` (and ``edit`` with a video SOURCE)
    takes them before smoothing, a short gap's interpolated values counted as measured; else as measured, valid
    where detected only."""
    return MotionTrack(scan.expressions, (scan.valid if filled else scan.detected).copy(), scan.times, scan.rate,
                       cuts=scan.cuts)


def _targets(inputs: EvalInputs, motion: MotionTrack | None, driving: ClipScan | None,
             times: np.ndarray) -> tuple[MotionTrack, MotionTrack]:
    """(targets, raw driving values) at ``times`` (seconds on the source's own clock). The targets are
    ``motion``'s values (the ``--motion`` file), else the driving scan's with short gaps filled, prepared as the
    jobs prepare them (``inputs.smooth``, every gap filled, clamped) and interpolated linearly; the raw values (the
    driving scan's as measured, else the motion file's) are taken at the nearest frame, unsmoothed, with their own
    validity."""
    source = motion if motion is not None else _track(driving, filled=True)
    raw = _track(driving, filled=False) if driving is not None else source
    prepared = prepared_motion(source, inputs.smooth)
    prepared = prepared.with_values(clamp_published(prepared.values))  # as rendered (jobs.expressions)
    return (resample(prepared, times, source.rate, method="linear"),
            resample(raw, times, raw.rate, method="nearest"))


def frame_ranges(inputs: EvalInputs) -> tuple[int, int, int]:
    """``(count, lo, hi)``: the output's frame count and the frames ``[lo, hi)`` of the reference clip (the
    driving clip of a run, the original of an edit) that ``inputs.start``/``end`` select. Read from the files alone,
    before any model or scan: :class:`InputError` when the counts cannot belong together (a run's output has one
    frame per selected driving frame; an edit keeps all of the original's frames)."""
    count = VideoReader(inputs.output).info.frame_count
    reference_path = inputs.original if inputs.mode == "edit" else inputs.driving
    reference = VideoReader(reference_path)
    lo, hi = clip_range(reference, inputs.start, inputs.end)
    if inputs.mode == "run" and count != hi - lo:
        ranged = inputs.start is not None or inputs.end is not None
        raise InputError(
            f"{inputs.output}: {count} frames, but {reference_path.name} has {hi - lo} frames "
            + ("in the given --start/--end" if ranged else "(pass the --start/--end the render used)"))
    if inputs.mode == "edit" and count != reference.info.frame_count:
        raise InputError(f"{inputs.output}: {count} frames, but the original {reference_path.name} has "
                         f"{reference.info.frame_count}: an edit keeps the original's frames")
    return count, lo, hi


@dataclass(frozen=True)
class EvalPlan:
    """What the arguments alone decide (:func:`plan_evaluation`): the output's frame ``count``, the reference
    clip's frames ``[lo, hi)`` (see :func:`frame_ranges`), the output's ``panel`` to score (``None``: the whole
    frame; see :func:`~retarget.evaluation.panels.result_panel`) and the ``--motion`` file's track (or ``None``)."""

    count: int
    lo: int
    hi: int
    panel: Box | None = None
    motion: MotionTrack | None = None


def _checked_motion(path: Path | None) -> MotionTrack | None:
    """The ``--motion`` file's track (``None`` without one); :class:`InputError` for a file that is not a motion
    file or has no frames."""
    if path is None:
        return None
    track = load_motion(path)
    if len(track) == 0:
        raise InputError(f"{path}: the motion file has no frames")
    return track


def plan_evaluation(inputs: EvalInputs) -> EvalPlan:
    """Every check that needs no model, made from the files alone (a fraction of a second): the frame counts
    (:func:`frame_ranges`), the motion file, the identity photo and an edit's SOURCE are readable, and where a
    side-by-side render's result is. One-line :class:`InputError` for the first that fails."""
    count, lo, hi = frame_ranges(inputs)
    motion = _checked_motion(inputs.motion)
    photo_size = None
    if inputs.identity is not None:
        photo = load_image(inputs.identity)
        photo_size = (photo.shape[1], photo.shape[0])
    if inputs.mode == "edit" and inputs.driving is not None:
        VideoReader(inputs.driving)  # SOURCE must be a readable video
    record = read_provenance(inputs.output)
    _note_range(inputs, record, lo, hi)
    left = inputs.driving if inputs.mode == "run" else inputs.original
    return EvalPlan(count, lo, hi, result_panel(inputs.output, record, inputs.mode, left, photo_size), motion)


def _note_range(inputs: EvalInputs, record: dict | None, lo: int, hi: int) -> None:
    """Warn (one log line) when the output's provenance ``record`` says it was rendered from other frames than
    ``[lo, hi)`` (a run's driving frames, an edit's edited range): most likely not the render's --start/--end. A
    warning only: the record does not name the clip, which may be a cut of the one rendered from."""
    settings = (record or {}).get("settings") or {}
    rendered = settings.get("driving_frames" if inputs.mode == "run" else "edited_range")
    if (record is None or record.get("command") != inputs.mode or not isinstance(rendered, list)
            or len(rendered) != 2 or not all(isinstance(value, int) for value in rendered)):
        return
    if list(rendered) != [lo, hi]:
        log.warning("%s records %s frames %s-%s, but --start/--end select %d-%d here: give the render's "
                    "--start/--end", inputs.output.name, "driving" if inputs.mode == "run" else "edited",
                    rendered[0], rendered[1] - 1, lo, hi - 1)


def _reference(inputs: EvalInputs, plan: EvalPlan, scan: Callable[..., _Scanned]
               ) -> tuple[_Scanned, np.ndarray, np.ndarray, np.ndarray, ClipScan | None]:
    """The reference clip scanned (``scan(reader, frames)``, see :func:`_scan`) over the frames the scores need, and
    how the output's ``N`` frames line up with it: ``(reference, reference_index [N], scored [N], target_times,
    driving)``. A run: the driving frames ``[lo, hi)`` alone, all scored, the targets at their times on the driving
    clock, the driving scan is the reference's. An edit: every frame of the original, those in ``[lo, hi)`` scored,
    the targets at their times from ``lo`` (SOURCE's clock), ``driving`` SOURCE's whole scan (``None`` without
    ``--driving``)."""
    lo, hi = plan.lo, plan.hi
    if inputs.mode == "run":
        ref = scan(VideoReader(inputs.driving), (lo, hi))
        return ref, np.arange(lo, hi), np.ones(plan.count, bool), ref.scan.times, ref.scan
    reader = VideoReader(inputs.original)
    ref = scan(reader, (0, reader.info.frame_count))
    reference_index = np.arange(plan.count)
    scored = (reference_index >= lo) & (reference_index < hi)
    driving = None
    if inputs.driving is not None:
        source = VideoReader(inputs.driving)
        driving = scan(source, (0, source.info.frame_count)).scan
    return ref, reference_index, scored, ref.scan.times[lo:hi] - ref.scan.times[lo], driving


def evaluate_clip(inputs: EvalInputs, models: FaceModels, *, chunk_size: int = 64, memory_budget: float = 2.0,
                  progress: bool = True, judges: list[IdentityJudge] | None = None,
                  plan: EvalPlan | None = None) -> ClipEvaluation:
    """Evaluate ``inputs`` (see the module doc); ``judges`` default to
    :func:`~retarget.evaluation.judges.identity_judges`, ``plan`` to :func:`plan_evaluation` (``inputs``'s).
    One-line errors (InputError, NoFaceError, WeightsError) for unusable inputs."""
    plan = plan if plan is not None else plan_evaluation(inputs)
    count = plan.count
    judges = judges if judges is not None else identity_judges(models)
    by_photo = inputs.identity is not None
    if by_photo:  # read first: a photo without a face fails before the clips are scanned
        image, face = photo_face(inputs.identity, models, 0)
        photo_embeddings = {judge.name: judge.embed(image, face.keypoints) for judge in judges}
    scans: dict = {}
    scan = functools.partial(_scan, models=models, chunk_size=chunk_size, memory_budget=memory_budget,
                             progress=progress, cache=scans)
    out = scan(output_reader(inputs.output, plan.panel), (0, count), allow_empty=True)
    times = out.reader.info.frame_times()
    ref, reference_index, scored, target_times, driving = _reference(inputs, plan, scan)
    ref_rows = reference_index - ref.first

    target_values, target_valid = np.zeros((count, DIM), np.float32), np.zeros(count, bool)
    driving_values, driving_valid = np.zeros((count, DIM), np.float32), np.zeros(count, bool)
    target, raw = _targets(inputs, plan.motion, driving, target_times)  # for the scored frames, in order
    target_values[scored], target_valid[scored] = target.values, target.valid
    driving_values[scored], driving_valid[scored] = raw.values, raw.valid

    output_face = out.scan.detected.copy()
    reference_face = ref.scan.detected[ref_rows]
    # Identity: the judges' alignment at the detected keypoints; flicker: a crop at the smoothed ones.
    out_pixels = _pixel_pass(out.reader, (0, count), output_face, judges, out.scan.keypoints,
                             _steady_keypoints(out.scan), chunk_size, memory_budget)
    ref_pixels = _pixel_pass(ref.reader, (ref.first, ref.stop), ref.scan.detected, [] if by_photo else judges,
                             ref.scan.keypoints, _steady_keypoints(ref.scan), chunk_size, memory_budget)
    identity: dict[str, np.ndarray] = {}
    for judge in judges:
        values = np.full(count, np.nan, np.float32)
        rows = output_face if by_photo else output_face & reference_face
        if rows.any():
            theirs = (photo_embeddings[judge.name] if by_photo
                      else ref_pixels.embeddings[judge.name][ref_rows[rows]])
            values[rows] = cosine(out_pixels.embeddings[judge.name][rows], theirs)
        identity[judge.name] = values

    # Flicker counts a pair of frames where both clips have the face in both frames.
    both = output_face & reference_face
    pairs = both & np.r_[False, both[:-1]]
    flicker_out = np.where(pairs, out_pixels.flicker, np.nan).astype(np.float32)
    flicker_ref = np.where(pairs, ref_pixels.flicker[ref_rows], np.nan).astype(np.float32)
    evaluation = ClipEvaluation(
        inputs=inputs, times=times, reference_index=reference_index, output_face=output_face,
        reference_face=reference_face, identity=identity, achieved=out.scan.expressions.astype(np.float32),
        target=target_values, target_valid=target_valid, driving_values=driving_values, driving_valid=driving_valid,
        landmarks=normalised_landmarks(out.scan.keypoints, output_face),
        reference_landmarks=normalised_landmarks(ref.scan.keypoints[ref_rows], reference_face),
        flicker=flicker_out, reference_flicker=flicker_ref, output_panel=plan.panel,
    )
    evaluation.summary = summarise(evaluation)
    return evaluation


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _ratio(numerator: float, denominator: float) -> float:
    if np.isnan(numerator) or np.isnan(denominator):
        return float("nan")
    if denominator == 0:
        return 1.0 if numerator == 0 else float("inf")
    return numerator / denominator


#: Every summary number: (direction, one-line definition), as the report prints them.
DEFINITIONS: dict[str, tuple[str, str]] = {
    "coverage": ("higher", "fraction of the output's frames in which a face is detected"),
    "identity.mean": ("higher", "mean cosine similarity of the output face to the identity, per judge"),
    "identity.p05": ("higher", "5th percentile of that cosine over frames: the worst 5% of frames are at or below"),
    "identity.drift": ("lower", "mean absolute change of that cosine from one frame to the next"),
    "expression.exp_mse": ("lower", "3D Exp-MSE: mean squared error of the 55 SMIRK values re-extracted from the "
                                    "output vs the targets"),
    "expression.expression": ("lower", "the same over the 50 expression coefficients"),
    "expression.eyelid": ("lower", "the same over the 2 eyelid values"),
    "expression.jaw": ("lower", "the same over the 3 jaw values"),
    "expression.mean_correlation": ("higher", "mean over channels of the Pearson correlation over time of achieved "
                                              "vs target values"),
    "stability.expression_jitter_ratio": ("1 = as steady", "mean |second difference| of the output's re-extracted "
                                          "values / the driving's (above 1: the render adds shake)"),
    "stability.landmark_jitter_ratio": ("1 = as steady", "the same for the 5-point face shape normalised by its "
                                        "similarity to the ArcFace template (face widths), output / reference"),
    "stability.flicker": ("lower", "mean absolute change of the aligned output face between frames (grey levels)"),
    "stability.flicker_ratio": ("1 = as steady", "output flicker / the reference clip's over the same frames"),
}


def summarise(evaluation: ClipEvaluation) -> dict:
    """The JSON-ready summary of ``evaluation`` (non-finite numbers as ``None``); see :data:`DEFINITIONS`.
    ``output_panel``: ``None``, or for a side-by-side render the ``layout`` and the scored ``box``
    ``[x0, y0, x1, y1]`` (columns ``[x0, x1)``, rows ``[y0, y1)`` of the output's frames)."""
    e = evaluation
    count = len(e.times)
    valid = e.expression_valid
    errors = metrics.exp_mse(e.achieved, e.target, valid)
    correlation = metrics.channel_correlation(e.achieved, e.target, valid)
    steady = e.output_face & e.driving_valid
    land = e.output_face & e.reference_face
    expression_jitter = metrics.jitter(e.achieved, steady)
    driving_jitter = metrics.jitter(e.driving_values, steady)
    landmark_jitter = metrics.jitter(e.landmarks, land)
    reference_landmark_jitter = metrics.jitter(e.reference_landmarks, land)
    flicker = float(np.nanmean(e.flicker)) if np.isfinite(e.flicker).any() else float("nan")
    reference_flicker = (float(np.nanmean(e.reference_flicker)) if np.isfinite(e.reference_flicker).any()
                         else float("nan"))
    names = channel_names()
    return {
        "mode": e.inputs.mode,
        "inputs": {name: (None if getattr(e.inputs, name) is None else str(getattr(e.inputs, name)))
                   for name in ("output", "driving", "identity", "original", "motion")}
        | {"start": e.inputs.start, "end": e.inputs.end, "smooth": e.inputs.smooth},
        "frames": count,
        "output_panel": None if e.output_panel is None else {
            "layout": LAYOUTS[e.inputs.mode],
            "box": [e.output_panel.x0, e.output_panel.y0, e.output_panel.x1, e.output_panel.y1],
        },
        "coverage": {
            "output_face_frames": int(e.output_face.sum()),
            "reference_face_frames": int(e.reference_face.sum()),
            "coverage": _finite(e.output_face.mean()) if count else None,
            "coverage_of_reference_faces": _finite(
                (e.output_face & e.reference_face).sum() / e.reference_face.sum()) if e.reference_face.any() else None,
        },
        "identity": {
            name: {key: _finite(value) for key, value in
                   metrics.identity_summary(np.nan_to_num(values), np.isfinite(values)).items()}
            | {"frames": int(np.isfinite(values).sum())}
            for name, values in e.identity.items()
        },
        "expression": {key: _finite(value) for key, value in errors.items()}
        | {
            "frames": int(valid.sum()),
            "mean_correlation": _finite(np.nanmean(correlation)) if np.isfinite(correlation).any() else None,
            "correlation": {name: _finite(value) for name, value in zip(names, correlation)},
        },
        "stability": {
            "expression_jitter": _finite(expression_jitter),
            "driving_expression_jitter": _finite(driving_jitter),
            "expression_jitter_ratio": _finite(_ratio(expression_jitter, driving_jitter)),
            "landmark_jitter": _finite(landmark_jitter),
            "reference_landmark_jitter": _finite(reference_landmark_jitter),
            "landmark_jitter_ratio": _finite(_ratio(landmark_jitter, reference_landmark_jitter)),
            "flicker": _finite(flicker),
            "reference_flicker": _finite(reference_flicker),
            "flicker_ratio": _finite(_ratio(flicker, reference_flicker)),
        },
        "definitions": {key: {"direction": direction, "definition": text}
                        for key, (direction, text) in DEFINITIONS.items()},
    }
