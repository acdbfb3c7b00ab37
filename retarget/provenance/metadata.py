"""Provenance metadata in the output container: a JSON record saying the video is synthetic.

The record goes into the container's ``comment`` tag, the one tag FFmpeg's MP4, MOV and Matroska muxers all keep
without extra flags (``description`` is dropped by MOV and custom keys by MP4/MOV unless
``movflags=use_metadata_tags``, which also moves the standard tags out of the atoms players show). A second,
plain-language line goes into ``description`` where the container keeps it (MP4, Matroska). Matroska upper-cases
tag names when read back, so :func:`read_provenance` matches names case-insensitively.

The record (:func:`provenance_record`)::

    {"synthetic": true, "tool": "retarget", "version": "0.1.0", "command": "run",
     "models_fingerprint": "<sha256 of the models folder listing>", "watermark": {...} | null,
     "settings": {...the job settings that change pixels...}}

Input file names and local paths are left out (they can name people); the settings hold only numbers and
choices.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from retarget import __version__
from retarget.provenance import watermark
from retarget.video.probe import open_input

TOOL = "retarget"
COMMENT_KEY = "comment"
DESCRIPTION_KEY = "description"
DESCRIPTION = f"Synthetic video: face generated or edited by {TOOL} (AI facial-performance retargeting)."


def models_fingerprint(models_dir: str | os.PathLike) -> str | None:
    """SHA-256 (hex) that identifies the weights in a models folder, the same on every machine.

    Built from :func:`retarget.jobs.model_files.model_files_identity` (the one description of the model files,
    also used by resume keys): the size of every published file (None where absent) and the content hash of the
    adapter files; modification times are left out, so a copy of the same weights elsewhere gives the same
    fingerprint. ``None`` when the folder does not exist.
    """
    from retarget.jobs.model_files import model_files_identity

    root = Path(models_dir)
    if not root.is_dir():
        return None
    identity = model_files_identity(root)
    sizes = {name: None if entry is None else entry["size"] for name, entry in identity["files"].items()}
    payload = json.dumps({"sizes": sizes, "sha256": identity["sha256"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def watermark_record(enabled: bool) -> dict | None:
    """What the metadata says about the frame watermark (``None`` when it is off)."""
    if not enabled:
        return None
    return {"scheme": "dwt-dct-qim", "payload": watermark.PAYLOAD_BYTES.hex(), "bits": len(watermark.PAYLOAD)}


def provenance_record(command: str, settings: Mapping, *, models_dir: str | os.PathLike | None,
                      watermarked: bool) -> dict:
    """The JSON-ready record for one rendered video (see module doc). ``settings``: JSON-ready job settings."""
    return {
        "synthetic": True,
        "tool": TOOL,
        "version": __version__,
        "command": command,
        "models_fingerprint": None if models_dir is None else models_fingerprint(models_dir),
        "watermark": watermark_record(watermarked),
        "settings": dict(settings),
    }


def container_tags(record: Mapping) -> dict[str, str]:
    """The container metadata tags that carry ``record``."""
    return {COMMENT_KEY: json.dumps(record, sort_keys=True, separators=(",", ":"), default=str),
            DESCRIPTION_KEY: DESCRIPTION}


def job_tags(command: str, options, **details) -> dict[str, str]:
    """Container tags for a video rendered by ``command`` with ``options`` (a
    :class:`~retarget.jobs.options.JobOptions`) and the job's own ``details`` (JSON-ready, e.g. ``reference``).

    The settings are ``options.render_key()`` without local paths: the models folder becomes its fingerprint, a
    base-model folder its name, the face-reference photo a yes/no.
    """
    settings = dict(options.render_key())
    settings.pop("models", None)
    settings["face_reference"] = settings.get("face_reference") is not None
    base = settings.get("base_model")
    if base is not None and Path(base).is_dir():
        settings["base_model"] = Path(base).resolve().name
    settings.update(details)
    return container_tags(provenance_record(command, settings, models_dir=options.models,
                                            watermarked=options.watermark))


def parse_record(text: str) -> dict | None:
    """The provenance record in a tag's text, or ``None`` when the text is not one."""
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    if isinstance(record, dict) and record.get("tool") == TOOL and record.get("synthetic") is True:
        return record
    return None


def read_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance record in ``path``'s container metadata (any tag, names matched case-insensitively, the
    ``comment`` tag first), or ``None``. :class:`InputError` when the file cannot be opened."""
    with open_input(path) as container:  # one-line InputError for a file FFmpeg cannot open
        tags = dict(container.metadata)
    ordered = sorted(tags.items(), key=lambda item: item[0].lower() != COMMENT_KEY)
    for _, text in ordered:
        record = parse_record(text)
        if record is not None:
            return record
    return None
