"""``retarget extract``: a clip's per-frame expression track to a motion file (no picture of the actor).

The file holds the raw SMIRK values of the followed face (``--face-index``), validity (False where no face was
found), timestamps and the exact rate (``--face-reference`` picks the person by a photo); smoothing and gap filling are applied when the motion is used, so the
file stays a faithful record. See :mod:`retarget.motion.motion_file` for the format.
"""

from __future__ import annotations

import logging
from pathlib import Path

from retarget.devices import resolve_device
from retarget.jobs.common import check_output
from retarget.faces.models import FaceModels
from retarget.jobs.frames import face_reference, scan_clip
from retarget.jobs.options import JobOptions
from retarget.motion.motion_file import save_motion
from retarget.video.reader import VideoReader

log = logging.getLogger(__name__)


def extract_job(video, output, options: JobOptions, faces: FaceModels | None = None) -> Path:
    """Write ``video``'s expression track to ``output`` (``.npz``, atomically); returns the output path."""
    output = check_output(output, inputs=(video, options.face_reference), suffixes=(".npz",))
    reader = VideoReader(video)
    faces = faces or FaceModels(options.models, device=resolve_device(options.device),
                                batch_size=max(8, options.batch_size), channel_order=options.smirk_channels)
    reference = face_reference(options.face_reference, faces) if options.face_reference is not None else None
    scan = scan_clip(reader, faces, options.face_index, chunk_size=options.chunk_size, progress=options.progress,
                     reference=reference, memory_budget=options.memory_budget, overlap=options.overlap)
    note = scan.missing_face_note(reader.info.path.name, filled=False)
    if note:
        log.warning("%s; the motion file marks them missing", note)
    metadata = {"source": Path(video).name, "frames": str(reader.info.frame_count),
                "variable_rate": "yes" if reader.info.is_vfr else "no"}  # how a run driven by it is timed
    if reference is None:
        metadata["face_index"] = str(options.face_index)
    else:
        metadata["face_reference"] = reference.path.name
    return save_motion(scan.motion(metadata, filled=False), output)
