"""``retarget run``: the actor's per-frame expressions (from the driving clip) on the person in a photo.

Output: the aligned face video at the model's resolution (``S x S``, 512 for the published model; with
``side_by_side`` the driving frame scaled to ``S`` rows, then the result), with the driving clip's frame count,
frame rate (exact) or timestamps (variable rate) and audio. Frames of the driving clip without a face get
expressions by gap filling (interpolated between the neighbouring faces, held at the ends), so they never stop
the run. The render is chunked and resumable (see :mod:`retarget.video.resume`); the output appears atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retarget.faces.alignment import ffhq_transform
from retarget.jobs.common import check_output, prepared_motion, timing
from retarget.jobs.frames import frames_of_span, photo_face, scan_clip
from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession
from retarget.video.audio import AudioSource
from retarget.video.compose import side_by_side_chunk
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender, file_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotoIdentity:
    """An identity photo read once: the RGB image, its face's keypoints and ArcFace embedding ``[512]``."""

    path: Path
    image: np.ndarray
    keypoints: np.ndarray
    embedding: np.ndarray

    def aligned(self, size: int) -> np.ndarray:
        """The FFHQ-aligned ``size x size`` face (the reference image)."""
        return ffhq_transform(self.keypoints, size).warp(self.image)


def identity_from_photo(path, session: RenderSession) -> PhotoIdentity:
    """Read and check an identity photo (largest face); one-line errors for non-images and photos without a face."""
    image, face = photo_face(path, session.faces, 0)
    embedding = session.faces.identity.embed(image, face.keypoints)
    return PhotoIdentity(Path(path), image, face.keypoints, embedding)


def run_job(driving, identity, output, options: JobOptions, *, reference: bool = True, side_by_side: bool = False,
            session: RenderSession | None = None, photo: PhotoIdentity | None = None) -> Path:
    """Render ``driving``'s performance on ``identity``'s person into ``output``; returns the output path.

    ``session`` and ``photo`` (``identity`` already read, see :func:`identity_from_photo`) let ``batch`` reuse
    what it loaded once.
    """
    output = check_output(output, inputs=(driving, identity))
    reader = VideoReader(driving)
    info = reader.info
    session = session or RenderSession(options)
    photo = photo if photo is not None else identity_from_photo(identity, session)
    scan = scan_clip(reader, session.faces, options.face_index, chunk_size=options.chunk_size,
                     progress=options.progress)
    track = prepared_motion(scan.motion(), options.smooth)

    pipe = session.pipeline
    size = pipe.image_size
    reference_image = photo.aligned(size) if reference else None
    key = {
        "command": "run", "driving": file_identity(driving), "identity": file_identity(photo.path),
        "reference": reference, "side_by_side": side_by_side, "options": options.render_key(),
    }
    job = ChunkedRender(output, key, info.frame_count, options.chunk_size, info.frame_rate,
                        settings=options.encoder, **timing(info))
    from tqdm.auto import tqdm

    pending = job.pending_chunks()
    bar = tqdm(total=info.frame_count, initial=job.done_frames(), desc=f"run {Path(driving).name}", unit="frame",
               disable=not options.progress)
    for span in pending:
        indices = np.arange(span.start, span.stop)
        faces = session.render(photo.embedding, track.values[span.start:span.stop], indices, reference_image)
        if side_by_side:
            faces = side_by_side_chunk(frames_of_span(reader, span.start, span.stop), faces, height=size)
        job.save_chunk(span.index, faces)
        bar.update(len(span))
    bar.close()
    return job.finalize(audio=AudioSource(Path(driving)), progress=options.progress)
