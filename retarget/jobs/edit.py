"""``retarget edit``: new expressions for a clip's own person, pasted back into the original frames.

SOURCE is a photo (one expression for every frame), a video (its per-frame expressions, matched to the clip by
time: source time 0 lines up with ``start``, so clips at different rates stay in step) or a motion ``.npz``.
Each frame's aligned face is its own reference; the identity is the clip's robust mean ArcFace embedding. The
result has the clip's size, frame count, timing and audio (with ``side_by_side``: original | result, twice as
wide). Frames outside ``[start, end)``, frames without the followed face and frames past the end of the source's
expressions pass through untouched; frames of a short gap in the face's detections (at most
:data:`~retarget.jobs.frames.MAX_FILLED_GAP` frames between two detections) are edited like the others, at the
interpolated keypoints, so a missed detection does not show the original face between edited frames. Stages
overlap (see :mod:`retarget.jobs.stages`): the pipeline loads during the face scan; while a chunk renders, the next
one's frames are decoded and cropped and the last one is pasted back and encoded. Decoding: the frames the scan
decodes (``[start, end)``) are kept for the render when they fit the budget (see
:func:`retarget.jobs.common.keep_scanned_frames`), so they are decoded once; otherwise, and for frames outside the
range, each chunk is decoded again on the prefetch thread. Host memory: the kept frames and at most
:data:`~retarget.jobs.stages.CHUNKS_IN_FLIGHT` chunks of frames, their length capped by ``options.memory_budget``
(see :func:`retarget.jobs.common.chunk_frames`).
Expressions: see :mod:`retarget.jobs.expressions`; in relative mode the target's own expression is each frame's
own (smoothed) SMIRK values and the neutral frame is a frame of SOURCE. The job has two phases, the face scan
(:func:`scan_edit`) and the render (its :class:`~retarget.jobs.scanned.ScannedClip`), so that ``batch`` can scan
one clip while another renders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.faces.alignment import ffhq_transform
from retarget.faces.image_io import IMAGE_SUFFIXES
from retarget.faces.pasteback import paste_back
from retarget.jobs.common import (check_output, chunk_frames, clip_range, edit_frame_bytes, keep_scanned_frames,
                                  picture_bytes, prepared_motion, timing)
from retarget.jobs.expressions import neutral_values, rendered_expressions
from retarget.jobs.frames import frame_spans, photo_face, scan_clip
from retarget.jobs.options import JobOptions
from retarget.jobs.scanned import ScannedClip, scan_check
from retarget.jobs.session import RenderSession
from retarget.jobs.stage_times import StageTimes, finish_job
from retarget.jobs.stages import CHUNKS_IN_FLIGHT, run_stages
from retarget.provenance.metadata import job_tags
from retarget.motion.motion_file import load_motion
from retarget.motion.resample import resample
from retarget.motion.track import MotionTrack
from retarget.video.audio import AudioSource
from retarget.video.compose import side_by_side_chunk
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender, file_identity, job_digest, with_reading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpressionSource:
    """Expressions read from SOURCE once: ``constant`` ``[55]`` for a photo, else a prepared (smoothed,
    gap-filled) ``track`` and ``faces`` (bool ``[N]``: its frames where the face was detected, without the short
    gaps the scan bridged or the gaps filled later; a neutral frame must be one of them)."""

    path: Path
    constant: np.ndarray | None = None
    track: MotionTrack | None = None
    faces: np.ndarray | None = None

    def for_times(self, times: np.ndarray, rate) -> tuple[np.ndarray, np.ndarray]:
        """Values ``[M, 55]`` and validity ``[M]`` at ``times`` (seconds from the source's start)."""
        if self.constant is not None:
            return np.repeat(self.constant[None], len(times), axis=0), np.ones(len(times), bool)
        if len(times) == 0:
            return np.zeros((0, self.track.values.shape[1]), np.float32), np.zeros(0, bool)
        aligned = resample(self.track, times, rate, method="linear")
        return aligned.values, aligned.valid


def needs_expressions(source, options: JobOptions) -> bool:
    """Whether an ``edit`` with SOURCE reads expressions with SMIRK: always, except from a motion file without
    ``relative`` (the motion file already holds them)."""
    return options.relative or Path(source).suffix.lower() != ".npz"


def check_expression_source(source, options: JobOptions) -> None:
    """Raise at once (before any model loads) for a SOURCE that cannot serve ``options``: ``--relative`` with a
    photo, which has no neutral frame."""
    if options.relative and Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{source}: --relative needs a video or motion file as SOURCE, not a photo "
                         "(a photo has no neutral frame)")


def read_expression_source(source, session: RenderSession) -> ExpressionSource:
    """Read SOURCE by kind: ``.npz`` motion file, image (by extension) or video. One-line errors for each."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    options = session.options
    if suffix == ".npz":
        motion = load_motion(path)
        track = prepared_motion(motion.with_bridged_gaps(), options.smooth)  # as a video source's scan reads them
        return ExpressionSource(path, track=track, faces=motion.valid)
    if suffix in IMAGE_SUFFIXES:
        image, face = photo_face(path, session.faces, 0)
        values = session.faces.expressions.extract([image], face.keypoints[None])[0]
        return ExpressionSource(path, constant=values)
    scan = scan_clip(VideoReader(path), session.faces, options.face_index, chunk_size=options.chunk_size,
                     progress=options.progress, memory_budget=options.memory_budget, overlap=options.overlap,
                     check=session.check_loading)
    return ExpressionSource(path, track=prepared_motion(scan.motion(), options.smooth), faces=scan.detected)


def edit_job(video, expression, output, options: JobOptions, *, start: float | None = None,
             end: float | None = None, side_by_side: bool = False, session: RenderSession | None = None,
             source: ExpressionSource | None = None) -> Path:
    """Give ``video``'s person the expressions of ``expression`` and write ``output``; returns the output path.

    ``session`` and ``source`` (already read, see :func:`read_expression_source`) let ``batch`` reuse them.
    """
    return scan_edit(video, expression, output, options, start=start, end=end, side_by_side=side_by_side,
                     session=session, source=source).render()


def scan_edit(video, expression, output, options: JobOptions, *, start: float | None = None,
              end: float | None = None, side_by_side: bool = False, session: RenderSession | None = None,
              source: ExpressionSource | None = None, times: StageTimes | None = None,
              check: Callable[[], None] | None = None) -> ScannedClip:
    """The first phase of :func:`edit_job` (same arguments): check and lock ``output`` (from before the face scan:
    a second process writing it stops at once), load the models, read SOURCE and scan the clip. Returns the
    :class:`~retarget.jobs.scanned.ScannedClip` whose ``render()`` is the second phase. ``times`` and ``check``:
    as for :func:`~retarget.jobs.run.scan_run`."""
    check_expression_source(expression, options)
    output = check_output(output, inputs=(video, expression, options.face_reference))
    return ScannedClip.scan(output, lambda: _scan_edit(video, expression, output, options, start, end,
                                                       side_by_side, session, source, times, check))


def _scan_edit(video, expression, output: Path, options: JobOptions, start: float | None, end: float | None,
               side_by_side: bool, session: RenderSession | None, source: ExpressionSource | None,
               shared_times: StageTimes | None, check: Callable[[], None] | None):
    """:func:`scan_edit` once ``output`` is checked and its work folder locked; returns the render phase."""
    stats = shared_times if shared_times is not None else StageTimes("edit")
    reader = VideoReader(video)
    info = reader.info
    lo, hi = clip_range(reader, start, end)
    own_session = session is None
    first_batch = (max(1, min(options.batch_size, options.chunk_size, hi - lo)), "per_frame")  # a guess: faces vary
    session = (session or RenderSession(options)).load(expressions=needs_expressions(expression, options),
                                                       background=options.overlap, warm_up=first_batch,
                                                       frames=hi - lo)
    source = source if source is not None else read_expression_source(expression, session)  # --relative with
    # a photo was refused by check_expression_source in scan_edit
    keep = keep_scanned_frames(hi - lo, info.width, info.height, options.memory_budget)
    scan = scan_clip(reader, session.faces, options.face_index, expressions=options.relative, identity=True,
                     chunk_size=options.chunk_size, progress=options.progress, reference=session.face_reference,
                     frames=(lo, hi), memory_budget=options.memory_budget, keep_frames=keep,
                     overlap=options.overlap, check=scan_check(session, check), times=stats)

    note = scan.missing_face_note(info.path.name, (lo, hi))
    if note:
        log.warning("%s; those frames pass through unedited", note)
    times = scan.times
    values = np.zeros((info.frame_count, 55), np.float32)
    has_values = np.zeros(info.frame_count, bool)
    source_values, source_valid = source.for_times(times[lo:hi] - times[lo], info.frame_rate)
    driving = MotionTrack(source_values, source_valid, times[lo:hi] - times[lo], info.frame_rate)
    own = neutral = None
    if options.relative:
        own = prepared_motion(scan.motion(frames=(lo, hi)), options.smooth).values
        neutral = neutral_values(source.track, options.neutral_frame, valid=source.faces,
                                 source=f"the expression source {source.path.name}")
    values[lo:hi] = rendered_expressions(driving, options, own=own, neutral=neutral)
    has_values[lo:hi] = source_valid
    edited = scan.valid & has_values
    uncovered, spans = frame_spans(scan.valid & ~has_values, times, info.frame_rate, (lo, hi))
    if uncovered:  # a SOURCE shorter than the edited range: say so, or the output looks merely unedited
        log.warning("%s ends before the edit does: %d of %d frames with the face (%s) have no expression from it "
                    "and pass through unedited (give a longer SOURCE, or --end to edit only what it covers)",
                    source.path.name, uncovered, hi - lo, spans)
    keypoints = scan.smoothed_keypoints()

    return lambda: _render_edit(video, source.path, output, options, side_by_side, session, reader, lo, hi, scan,
                                values, edited, keypoints, stats, own_session, finish=shared_times is None)


def edit_job_key(video, source, options: JobOptions, side_by_side: bool, lo: int, hi: int,
                 pixel_aspect: Fraction = Fraction(1), interlaced: bool = False) -> dict:
    """What an ``edit`` render depends on (see :func:`~retarget.jobs.run.run_job_key`): the clip's and the
    expression source's file identities, the edited frames ``[lo, hi)``, the settings that change pixels and,
    for anamorphic and interlaced clips, what the reader does to their pictures."""
    key = {
        "command": "edit", "video": file_identity(video), "expression": file_identity(source),
        "range": [lo, hi], "side_by_side": side_by_side, "options": options.render_key(),
    }
    return with_reading(key, pixel_aspect, interlaced)


def _render_edit(video, source_path: Path, output: Path, options: JobOptions, side_by_side: bool,
                 session: RenderSession, reader: VideoReader, lo: int, hi: int, scan, values: np.ndarray,
                 edited: np.ndarray, keypoints: np.ndarray, stats: StageTimes, own_session: bool, finish: bool) -> Path:
    """The second phase of :func:`edit_job`: render the edited frames of the scanned clip, paste them back and
    encode every frame."""
    info = reader.info
    pipe = session.pipeline
    if own_session:
        stats.add("load", session.load_seconds)
        stats.set_load_parts(session.load_parts)
    stats.set_model(pipe.device, pipe.dtype)
    size = pipe.image_size
    key = edit_job_key(video, source_path, options, side_by_side, lo, hi, info.pixel_aspect, info.interlaced)
    chunk = chunk_frames(edit_frame_bytes(info.width, info.height, size, side_by_side), options.chunk_size,
                         options.memory_budget, picture_bytes(info.width, info.height), in_flight=CHUNKS_IN_FLIGHT,
                         reserved=0 if scan.frames is None else scan.frames.nbytes)
    # the clip's own frames: encoded in its colour, so players show the untouched pixels as they show the clip
    settings = replace(options.encoder, colour=info.colour)
    with ChunkedRender(output, key, info.frame_count, chunk, info.frame_rate, settings=settings,
                       **timing(info)) as job:  # its lock is released however the render ends
        from tqdm.auto import tqdm

        bar = tqdm(total=info.frame_count, initial=job.done_frames(), desc=f"edit {Path(video).name}", unit="frame",
                   disable=not options.progress)

        def prepare(span):
            """Prefetch thread: the chunk's frames (kept from the scan, or decoded), the original for the left panel,
            and the aligned crops of the edited frames."""
            frames = scan.frames_of_span(reader, span.start, span.stop, stats)
            original = frames.copy() if side_by_side else None
            rows = np.flatnonzero(edited[span.start:span.stop]) + span.start
            with stats.stage("paste"):
                transforms = [ffhq_transform(keypoints[i], size) for i in rows]
                crops = [t.warp(frames[i - span.start]) for t, i in zip(transforms, rows)]
            return frames, original, rows, transforms, crops

        def render(span, prepared):
            _, _, rows, _, crops = prepared
            if not len(rows):
                return None
            with stats.stage("render"):
                return session.render(scan.identity, values[rows], rows, crops, times=stats)

        def save(span, prepared, faces):
            """Finish thread: paste the faces back, compose, encode the chunk."""
            frames, original, rows, transforms, _ = prepared
            with stats.stage("paste"):
                for t, i, face in zip(transforms, rows, faces if faces is not None else ()):
                    paste_back(frames[i - span.start], face, t, color_match=options.color_match, inplace=True)
                if original is not None:
                    frames = side_by_side_chunk(original, frames)
            with stats.stage("encode"):
                job.save_chunk(span.index, frames, watermark=options.watermark)
            stats.frames_done(len(span))

        run_stages(job.pending_chunks(), prepare, render, save, done=lambda span: bar.update(len(span)),
                   overlap=options.overlap)
        bar.close()
        tags = job_tags("edit", options, side_by_side=side_by_side, edited_range=[lo, hi],
                        edited_frames=int(np.count_nonzero(edited)), job_digest=job_digest(key))
        result = job.finalize(audio=AudioSource(Path(video)), progress=options.progress, metadata=tags,
                              timecode=info.timecode)  # the whole clip: the source's own start timecode
    if finish:
        finish_job(stats)
    return result
