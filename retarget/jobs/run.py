"""``retarget run``: the actor's per-frame expressions (from the driving clip) on the person in a photo.

Output: the aligned face video at the model's resolution (``S x S``, 512 for the published model), or with
``paste_back`` the identity photo with each face pasted back where its face was (the photo scaled down to at most
:data:`PASTE_BACK_MAX_SIDE` pixels on its long side, never up); with ``side_by_side`` the driving frame scaled to
the result's rows (at most :data:`SIDE_BY_SIDE_MAX_ROWS` with ``paste_back``), then the result; with the driving
clip's frame count,
frame rate (exact) or timestamps (variable rate) and audio; ``start``/``end`` render only the driving frames with
``start <= t < end`` (seconds) and cut the audio to match. Expressions: see :mod:`retarget.jobs.expressions`
(relative mode uses the photo's own expression). Frames of the driving clip without a face get
expressions by gap filling: short gaps in the detections are filled by the scan (see
:class:`~retarget.jobs.frames.ClipScan`), the rest by the motion track (interpolated between the neighbouring
faces, held at the ends), so they never stop the run. The render is chunked and resumable (see
:mod:`retarget.video.resume`) in overlapped stages (see :mod:`retarget.jobs.stages`: the pipeline loads during the
face scan; the next chunk's driving frames decode and the last chunk is composed and encoded while a chunk renders),
at most :data:`~retarget.jobs.stages.CHUNKS_IN_FLIGHT` chunks of frames in host memory, their length capped by
``options.memory_budget`` (see :func:`retarget.jobs.common.chunk_frames`). With ``side_by_side`` the driving
frames the scan decodes are kept for the render when they fit the budget (see
:func:`retarget.jobs.common.keep_scanned_frames`), else decoded again chunk by chunk. The output appears
atomically. The job has two phases, the face scan (:func:`scan_run`) and the render (its
:class:`~retarget.jobs.scanned.ScannedClip`), so that ``batch`` can scan one clip while another renders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from retarget.errors import InputError, NoFaceError
from retarget.faces.alignment import AlignTransform, ffhq_transform
from retarget.faces.pasteback import face_mask
from retarget.faces.pasteback import paste_back as paste_back_face
from retarget.jobs.common import (audio_of_range, check_output, chunk_frames, clip_range, keep_scanned_frames,
                                  motion_range, picture_bytes, prepared_motion, range_timecode, run_frame_bytes,
                                  timing)
from retarget.jobs.expressions import neutral_values, rendered_expressions
from retarget.jobs.frames import missing_face_note, photo_face, scan_clip
from retarget.jobs.options import JobOptions
from retarget.jobs.scanned import ScannedClip, scan_check
from retarget.jobs.session import RenderSession
from retarget.jobs.stage_times import StageTimes, finish_job
from retarget.jobs.stages import CHUNKS_IN_FLIGHT, run_stages
from retarget.motion.adjust import check_neutral_in_range
from retarget.motion.motion_file import load_motion
from retarget.motion.track import MotionTrack
from retarget.provenance.metadata import job_tags
from retarget.video.audio import AudioSource
from retarget.video.colour import SDR_BT709
from retarget.video.compose import side_by_side_chunk
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender, file_identity, job_digest, with_reading

log = logging.getLogger(__name__)


#: Longest side of a ``paste_back`` output in pixels: a larger identity photo is scaled down to it (a phone photo's
#: 4032 x 3024 becomes 1920 x 1440), which keeps the frames within what players commonly take and the 512-pixel
#: face about as sharp as the photo around it.
PASTE_BACK_MAX_SIDE = 1920

#: Most rows of a side-by-side frame with ``paste_back`` (its panels are scaled to the pasted photo's height, or to
#: this many rows if that is less).
SIDE_BY_SIDE_MAX_ROWS = 720


@dataclass(frozen=True)
class PhotoIdentity:
    """An identity photo read once: the RGB image, its face's keypoints, ArcFace embedding ``[512]`` and SMIRK
    expression ``[55]`` (the target's own expression in relative mode)."""

    path: Path
    image: np.ndarray
    keypoints: np.ndarray
    embedding: np.ndarray
    expression: np.ndarray

    def aligned(self, size: int) -> np.ndarray:
        """The FFHQ-aligned ``size x size`` face (the reference image)."""
        return ffhq_transform(self.keypoints, size).warp(self.image)

    def canvas(self, size: int, max_side: int | None = None) -> tuple[np.ndarray, AlignTransform]:
        """The photo to paste faces into, scaled (area-averaged) so that its long side is at most ``max_side``
        (default :data:`PASTE_BACK_MAX_SIDE`), and the transform from it to the FFHQ-aligned ``size x size`` face
        (its keypoints scaled alike)."""
        height, width = self.image.shape[:2]
        shape = paste_back_canvas_size(width, height, max_side)
        if shape == (width, height):
            return self.image, ffhq_transform(self.keypoints, size)
        image = cv2.resize(self.image, shape, interpolation=cv2.INTER_AREA)
        factors = np.array([shape[0] / width, shape[1] / height], np.float32)
        return image, ffhq_transform((self.keypoints + 0.5) * factors - 0.5, size)  # pixel centres map to centres


def paste_back_canvas_size(width: int, height: int, max_side: int | None = None) -> tuple[int, int]:
    """(width, height) of the canvas a ``width`` x ``height`` photo is pasted into: scaled down so that its long
    side is at most ``max_side`` (default :data:`PASTE_BACK_MAX_SIDE`), never up."""
    scale = min(1.0, (max_side or PASTE_BACK_MAX_SIDE) / max(height, width))
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def identity_from_photo(path, session: RenderSession) -> PhotoIdentity:
    """Read and check an identity photo (largest face); one-line errors for non-images and photos without a face."""
    image, face = photo_face(path, session.faces, 0)
    embedding = session.faces.identity.embed(image, face.keypoints)
    expression = session.faces.expressions.extract([image], face.keypoints[None])[0]
    return PhotoIdentity(Path(path), image, face.keypoints, embedding, expression)


def run_job(driving, identity, output, options: JobOptions, *, reference: bool = True, side_by_side: bool = False,
            start: float | None = None, end: float | None = None, session: RenderSession | None = None,
            photo: PhotoIdentity | None = None, paste_back: bool = False) -> Path:
    """Render ``driving``'s performance on ``identity``'s person into ``output``; returns the output path.

    ``start``/``end`` (seconds, ``None`` = open) limit the rendered part of ``driving``. ``session`` and
    ``photo`` (``identity`` already read, see :func:`identity_from_photo`) let ``batch`` reuse what it loaded once.
    ``paste_back``: write the identity photo with the faces pasted back (see the module doc) instead of the faces.
    """
    return scan_run(driving, identity, output, options, reference=reference, side_by_side=side_by_side, start=start,
                    end=end, session=session, photo=photo, paste_back=paste_back).render()


def scan_run(driving, identity, output, options: JobOptions, *, reference: bool = True, side_by_side: bool = False,
             start: float | None = None, end: float | None = None, session: RenderSession | None = None,
             photo: PhotoIdentity | None = None, times: StageTimes | None = None,
             check: Callable[[], None] | None = None, paste_back: bool = False) -> ScannedClip:
    """The first phase of :func:`run_job` (same arguments): check and lock ``output`` (from before the face scan: a
    second process writing it stops at once), load the models, read the photo and scan the driving clip. Returns
    the :class:`~retarget.jobs.scanned.ScannedClip` whose ``render()`` is the second phase.

    ``times``: a recorder shared by several jobs (``batch``), which the job adds its busy times and frames to and
    leaves running; without it the job records and finishes its own (see :mod:`retarget.jobs.stage_times`).
    ``check``: called between the scan's chunks besides the session's load check; raising there stops the scan
    (``batch`` stops a scan ahead this way).
    """
    output = check_output(output, inputs=(driving, identity, options.face_reference))
    return ScannedClip.scan(output, lambda: _scan_run(driving, identity, output, options, reference, side_by_side,
                                                      start, end, session, photo, times, check, paste_back))


def _scan_run(driving, identity, output: Path, options: JobOptions, reference: bool, side_by_side: bool,
              start: float | None, end: float | None, session: RenderSession | None, photo: PhotoIdentity | None,
              times: StageTimes | None, check: Callable[[], None] | None, paste_back: bool):
    """:func:`scan_run` once ``output`` is checked and its work folder locked; returns the render phase."""
    stats = times if times is not None else StageTimes("run")
    from_motion = is_motion_file(driving)
    if from_motion:
        if side_by_side:
            raise InputError(f"{driving}: a motion file has no pictures to show beside the result: drop "
                             "--side-by-side, or drive with the video the motion was extracted from")
        whole = load_motion(driving)
        lo, hi = motion_range(whole, driving, start, end)
        in_range = motion_slice(whole, lo, hi)
        detected = in_range.valid  # without the bridged gaps: a neutral frame is one where the face was found
        track = in_range.with_bridged_gaps()  # as the clip's own run reads them
        if not track.valid.any():
            raise NoFaceError(f"{driving}: no frame shows a face between {start or 0} s and "
                              f"{f'{end} s' if end is not None else 'the end'}")
    else:
        reader = VideoReader(driving)
        lo, hi = clip_range(reader, start, end)
    if options.relative and options.neutral_frame is not None:  # before the scan: the frame count is known
        check_neutral_in_range(options.neutral_frame, hi - lo, "--neutral-frame", lo)
    own_session = session is None
    first_batch = (max(1, min(options.batch_size, options.chunk_size, hi - lo)), "shared" if reference else None)
    session = (session or RenderSession(options)).load(background=options.overlap, warm_up=first_batch,
                                                       frames=hi - lo)
    photo = photo if photo is not None else identity_from_photo(identity, session)
    if from_motion:
        scan = None
        note = missing_face_note(Path(driving).name, ~whole.valid, whole.times, whole.rate, (lo, hi))
        timing_of_output = DrivingTiming.of_motion(track)
    else:
        info = reader.info
        keep = side_by_side and keep_scanned_frames(hi - lo, info.width, info.height, options.memory_budget)
        scan = scan_clip(reader, session.faces, options.face_index, chunk_size=options.chunk_size,
                         progress=options.progress, reference=session.face_reference, frames=(lo, hi),
                         memory_budget=options.memory_budget, keep_frames=keep, overlap=options.overlap,
                         check=scan_check(session, check), times=stats)
        note = scan.missing_face_note(info.path.name, (lo, hi), filled=False)  # bridged gaps too: their
        track = scan.motion(frames=(lo, hi))                                    # expressions are interpolated
        detected = scan.detected[lo:hi]
        timing_of_output = DrivingTiming.of_clip(reader, lo, hi)
    prepared = prepared_motion(track, options.smooth)
    # the neutral frame is one where the face was detected (not a bridged or filled gap), counted in clip numbers
    neutral = neutral_values(prepared, options.neutral_frame, first=lo, valid=detected) if options.relative \
        else None
    if note:  # after the checks: a job that stops says only why
        log.warning("%s; those frames take the expressions of the neighbouring frames with a face", note)
    expressions = rendered_expressions(prepared, options, own=photo.expression, neutral=neutral)
    return lambda: _render_run(driving, output, options, reference, side_by_side, session, photo, timing_of_output,
                               lo, hi, scan, expressions, stats, own_session, finish=times is None,
                               paste_back=paste_back, reader=None if from_motion else reader)


def is_motion_file(path) -> bool:
    """Whether ``path`` names a motion file (``.npz``, see :mod:`retarget.motion.motion_file`) rather than a video."""
    return Path(path).suffix.lower() == ".npz"


def motion_slice(track: MotionTrack, lo: int, hi: int) -> MotionTrack:
    """Frames ``[lo, hi)`` of ``track``, their times from the first of them."""
    return MotionTrack(track.values[lo:hi], track.valid[lo:hi], track.times[lo:hi] - track.times[lo], track.rate,
                       metadata=track.metadata, filled=None if track.filled is None else track.filled[lo:hi],
                       cuts=None if track.cuts is None else track.cuts[lo:hi])


#: The time base of the output of a variable-rate motion file (its times are float seconds): 1/90000 s, MPEG's.
MOTION_TIME_BASE = Fraction(1, 90000)


@dataclass(frozen=True)
class DrivingTiming:
    """What a ``run`` output takes from its driving source besides the expressions: ``frame_rate`` (exact),
    ``chunked`` (:class:`~retarget.video.resume.ChunkedRender` keywords: none for constant rate, else ``time_base``
    and ``pts``), ``audio`` (or None), ``timecode`` (SMPTE, or None), and the ``pixel_aspect`` and ``interlaced``
    flags of a clip (they enter the render key, see :func:`run_job_key`)."""

    frame_rate: Fraction
    chunked: dict
    audio: AudioSource | None = None
    timecode: str | None = None
    pixel_aspect: Fraction = Fraction(1)
    interlaced: bool = False

    @classmethod
    def of_clip(cls, reader: VideoReader, lo: int, hi: int) -> "DrivingTiming":
        """A driving clip's frames ``[lo, hi)``: its rate or timestamps, audio and timecode for that range."""
        info = reader.info
        return cls(info.frame_rate, timing(info, lo, hi), audio_of_range(reader, lo, hi), range_timecode(info, lo),
                   info.pixel_aspect, info.interlaced)

    @classmethod
    def of_motion(cls, track: MotionTrack) -> "DrivingTiming":
        """A motion file's frames (no audio, no timecode): frame k at k / rate when its clip had a constant rate,
        else its times in :data:`MOTION_TIME_BASE` units (a variable-rate clip's motion keeps its timing). The
        rate is the one ``extract`` recorded (``variable_rate`` in the metadata); for files without it, the times
        count as constant-rate when their intervals lie within 2 ms (or 1 %) of each other, as the clip's timestamps
        at a millisecond time base do (see :func:`retarget.video.probe.probe_video`)."""
        recorded = track.metadata.get("variable_rate")
        if recorded in ("yes", "no"):
            constant = recorded == "no"
        else:
            intervals = np.diff(track.times)
            constant = len(intervals) == 0 or \
                float(np.ptp(intervals)) <= max(0.002, 0.01 * float(np.median(intervals)))
        if constant:
            return cls(track.rate, {})
        pts = np.rint(track.times / float(MOTION_TIME_BASE)).astype(np.int64)
        return cls(track.rate, {"time_base": MOTION_TIME_BASE, "pts": pts})


def run_job_key(driving, identity, options: JobOptions, reference: bool, side_by_side: bool, lo: int, hi: int,
                pixel_aspect: Fraction = Fraction(1), interlaced: bool = False, paste_back: bool = False) -> dict:
    """What a ``run`` render depends on, for resuming (see :class:`~retarget.video.resume.ChunkedRender`) and for
    its output's ``job_digest``: the driving clip's and photo's file identities, the driving frames ``[lo, hi)``
    and the settings that change pixels. ``pixel_aspect`` and ``interlaced`` (the clip's, see
    :class:`~retarget.video.probe.VideoInfo`) enter the key only for anamorphic and interlaced clips (see
    :func:`~retarget.video.resume.with_reading`). ``paste_back`` enters the key only when set (with the sizes it
    uses), so the keys of other renders are those of earlier versions."""
    key = {
        "command": "run", "driving": file_identity(driving), "identity": file_identity(identity),
        "reference": reference, "side_by_side": side_by_side, "range": [lo, hi], "options": options.render_key(),
    }
    if paste_back:
        key["paste_back"] = {"max_side": PASTE_BACK_MAX_SIDE, "side_by_side_rows": SIDE_BY_SIDE_MAX_ROWS}
    return with_reading(key, pixel_aspect, interlaced)


def _render_run(driving, output: Path, options: JobOptions, reference: bool, side_by_side: bool,
                session: RenderSession, photo: PhotoIdentity, driving_timing: DrivingTiming, lo: int, hi: int,
                scan, expressions: np.ndarray, stats: StageTimes, own_session: bool, finish: bool,
                paste_back: bool = False, reader: VideoReader | None = None) -> Path:
    """The second phase of :func:`run_job`: render frames ``[lo, hi)`` of the driving source and encode them
    (``reader`` and ``scan``: the driving clip's, for a side-by-side output; None for a motion file)."""
    pipe = session.pipeline
    if own_session:
        stats.add("load", session.load_seconds)
        stats.set_load_parts(session.load_parts)
    stats.set_model(pipe.device, pipe.dtype)
    size = pipe.image_size
    reference_image = photo.aligned(size) if reference else None
    key = run_job_key(driving, photo.path, options, reference, side_by_side, lo, hi, driving_timing.pixel_aspect,
                      driving_timing.interlaced, paste_back=paste_back)
    canvas, to_face = photo.canvas(size) if paste_back else (None, None)
    result_size = (canvas.shape[1], canvas.shape[0]) if paste_back else (size, size)
    panel_rows = min(result_size[1], SIDE_BY_SIDE_MAX_ROWS) if paste_back else size
    mask = face_mask(size)
    width, height = (reader.info.width, reader.info.height) if reader is not None else result_size
    frame_bytes = run_frame_bytes(width, height, size, side_by_side, result_size if paste_back else None,
                                  panel_rows)
    # the work on single frames (decoding, pasting, encoding) is on pictures of the driving clip's size or, pasted
    # back, of the photo's: the larger one
    picture = max(picture_bytes(width, height), picture_bytes(*result_size) if paste_back else 0)
    chunk = chunk_frames(frame_bytes, options.chunk_size, options.memory_budget, picture, in_flight=CHUNKS_IN_FLIGHT,
                         reserved=0 if scan is None or scan.frames is None else scan.frames.nbytes)
    # the faces are the model's RGB (and a side-by-side's driving frames RGB as decoded): BT.709, tagged
    settings = replace(options.encoder, colour=SDR_BT709)
    with ChunkedRender(output, key, hi - lo, chunk, driving_timing.frame_rate, settings=settings,
                       **driving_timing.chunked) as job:  # its lock is released however the render ends
        from tqdm.auto import tqdm

        bar = tqdm(total=hi - lo, initial=job.done_frames(), desc=f"run {Path(driving).name}", unit="frame",
                   disable=not options.progress)

        def prepare(span):
            """Prefetch thread: the chunk's driving frames (side by side only)."""
            return scan.frames_of_span(reader, lo + span.start, lo + span.stop, stats) if side_by_side else None

        def render(span, driving_frames):
            with stats.stage("render"):
                return session.render(photo.embedding, expressions[span.start:span.stop],
                                      np.arange(span.start, span.stop), reference_image, times=stats)

        def save(span, driving_frames, faces):
            """Finish thread: paste back, compose and encode the chunk."""
            if paste_back:
                with stats.stage("paste"):
                    pasted = np.empty((len(faces), *canvas.shape), np.uint8)
                    for frame, face in zip(pasted, faces):
                        frame[...] = canvas
                        paste_back_face(frame, face, to_face, mask, color_match=options.color_match, inplace=True)
                    faces = pasted
            if side_by_side:
                with stats.stage("paste"):
                    faces = side_by_side_chunk(driving_frames, faces, height=panel_rows)
            with stats.stage("encode"):
                job.save_chunk(span.index, faces, watermark=options.watermark)
            stats.frames_done(len(span))

        run_stages(job.pending_chunks(), prepare, render, save, done=lambda span: bar.update(len(span)),
                   overlap=options.overlap)
        bar.close()
        tags = job_tags("run", options, reference=reference, side_by_side=side_by_side, driving_frames=[lo, hi],
                        job_digest=job_digest(key), **({"paste_back": True} if paste_back else {}))
        result = job.finalize(audio=driving_timing.audio, progress=options.progress, metadata=tags,
                              timecode=driving_timing.timecode)
    if finish:
        finish_job(stats)
    return result
