"""``retarget verify``: look for the provenance metadata and the frame watermark in a video.

What a positive answer means: the metadata record says the file was written by retarget (it can be removed or
copied by anyone who re-muxes the file, so it proves little on its own); a found watermark means the frames carry
retarget's 48-bit mark (false-positive bound for unmarked video: :func:`retarget.provenance.watermark.
false_positive_rate`). Neither says which frames or which part of a frame is generated: ``run`` generates every
frame, ``edit`` regenerates the face in the frames where it was found and passes the rest through, yet marks every
output frame; ``--side-by-side`` outputs are marked over the whole composed frame, the real half included.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from retarget.errors import InputError, require_file
from retarget.provenance import watermark
from retarget.provenance.metadata import read_provenance

#: Frames read for the watermark by default (spread evenly over the clip).
DEFAULT_MAX_FRAMES = 120


def _sampled_frames(path: Path, max_frames: int):
    """Every k-th decoded frame of ``path`` so that at most ``max_frames`` are yielded (uint8 RGB)."""
    from retarget.video.reader import VideoReader

    reader = VideoReader(path)
    step = max(1, math.ceil(reader.info.frame_count / max_frames))
    taken = 0
    for rgb, _, index in reader.iter_frames():
        if index % step == 0 and taken < max_frames:
            taken += 1
            yield rgb


def verify_file(path: str | os.PathLike, max_frames: int = DEFAULT_MAX_FRAMES) -> dict:
    """Check ``path`` for both provenance signs.

    Returns ``{"file": str, "metadata": {"found": bool, "record": dict | None}, "watermark": <the result of
    :func:`retarget.provenance.watermark.detect`>}``. :class:`InputError` when the file is missing or not a video.
    """
    path = require_file(path, "a video file")
    if max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {max_frames}")
    record = read_provenance(path)
    mark = watermark.detect(_sampled_frames(path, max_frames))
    return {"file": str(path), "metadata": {"found": record is not None, "record": record}, "watermark": mark}


def format_report(report: dict) -> str:
    """The human-readable lines of :func:`verify_file`'s result."""
    lines = [report["file"]]
    record = report["metadata"]["record"]
    if record is None:
        lines.append("  metadata:  no provenance record")
    else:
        fingerprint = record.get("models_fingerprint") or "unknown"
        mark = record.get("watermark")
        unmarkable = report["watermark"]["bit_accuracy"] is None and report["watermark"]["frames"] == 0 and \
            "too small" in (report["watermark"]["reason"] or "")  # the writer leaves such frames unmarked
        state = "on" if mark else "off"
        if mark and unmarkable:
            state = "on when written, but the frames are too small to carry it"
        else:
            state += " when written"
        lines.append(f"  metadata:  synthetic video made by {record.get('tool')} {record.get('version')} "
                     f"({record.get('command')}); models {fingerprint[:12]}; watermark {state}")
        settings = record.get("settings") or {}
        shown = [f"{name}={settings[name]}" for name in ("steps", "guidance", "expression_scale", "reference_scale",
                                                          "seed") if name in settings]
        if shown:
            lines.append(f"             settings: {', '.join(shown)}")
    mark = report["watermark"]
    if mark["bit_accuracy"] is None:
        lines.append(f"  watermark: not checked ({mark['reason']})")
    else:
        verdict = "found" if mark["found"] else "not found"
        per_frame = mark["frame_accuracy"]
        lines.append(f"  watermark: {verdict}: {mark['matching_bits']}/{mark['bits']} bits match "
                     f"({100 * mark['bit_accuracy']:.1f}%, needs {mark['threshold']}), {mark['frames']} frame(s) "
                     f"checked; per-frame accuracy mean {100 * per_frame['mean']:.1f}%, "
                     f"min {100 * per_frame['min']:.1f}%")
    return "\n".join(lines)
