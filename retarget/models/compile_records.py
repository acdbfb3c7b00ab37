"""Records of the UNet graphs compiled into the persistent inductor cache.

A compile whose artefacts are in inductor's cache is loaded in seconds; a first compile takes about a minute. A job
must choose whether to compile before it pays either, so every compiled denoising loop that finished leaves a small
record in the cache folder (``retarget-compiled/<key>.json``), keyed by everything that decides the compiled graph
or the cache's own key: torch and Triton releases, the device, dtype, UNet configuration, expression tokens, the
attention processors' code, the batch rows, guidance and reference on or off, and the compile settings. A record
found for the same key means the graph was compiled on this machine, into this cache, by the same code. It lives in
the cache folder, so clearing the cache clears the records too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RECORDS_FOLDER = "retarget-compiled"


def record_key(description: dict) -> str:
    """The key of a compiled graph's description (any JSON-able values; others by ``str``): a hex digest."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def record_path(cache_dir: Path, description: dict) -> Path:
    return Path(cache_dir) / RECORDS_FOLDER / f"{record_key(description)}.json"


def has_record(cache_dir: Path, description: dict) -> bool:
    """Whether a graph of this description was recorded as compiled into ``cache_dir``."""
    return record_path(cache_dir, description).is_file()


def write_record(cache_dir: Path, description: dict) -> Path:
    """Record a compiled graph of this description in ``cache_dir`` (written atomically; the description is the
    file's content, for a person who looks). Returns the file."""
    from ..video.atomic import atomic_output

    path = record_path(cache_dir, description)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(description, sort_keys=True, indent=1, default=str))
    return path


def source_digest(*modules) -> str:
    """A digest of the source files of ``modules`` (the code a compiled graph was traced from)."""
    digest = hashlib.sha1()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]
