"""The identity of the model files a render uses, for resume keys: changed weights must not reuse old chunks.

Every file of the published layout (:data:`~retarget.jobs.weights.WEIGHT_FILES`) and of a local base-model
folder (``vae/``, ``tokenizer/``, ``scheduler/``) is recorded by size and modification time; the two adapter files
(the ones most often swapped for retrained versions, possibly with the same size and a preserved timestamp) are
also hashed in full. Hashes are cached per process by (path, size, modification and change times, inode), so a
``batch`` hashes each adapter once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Files (relative to the models folder) whose content is hashed, not only their size and time.
ADAPTER_FILES = ("exp_adapter/exp_adapter.bin", "ref_adapter/pytorch_lora_weights.safetensors")

_hash_cache: dict[tuple, str] = {}


def _stat_entry(path: Path) -> dict | None:
    """``{"size", "mtime_ns"}`` of a file, or None when it is absent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 (hex) of the whole file, cached while its path, size, modification and change times and inode stay
    the same (the change time moves on every write, even one that restores the modification time)."""
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if cache_key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(block):
                digest.update(chunk)
        _hash_cache[cache_key] = digest.hexdigest()
    return _hash_cache[cache_key]


def model_files_identity(models: str | os.PathLike, base_model: str | None = None) -> dict:
    """JSON-ready identity of the model files a render with ``models`` and ``base_model`` reads.

    ``files``: ``{relative path: {"size", "mtime_ns"} or None (absent)}`` for every published file (optional
    ones included: whether SCRFD or the MediaPipe landmarker is present changes the faces found). ``sha256``:
    ``{relative path: hex}`` for the present :data:`ADAPTER_FILES`. ``base``: for a local base-model folder the same
    ``{path: {"size", "mtime_ns"}}`` over its ``vae/``, ``tokenizer/`` and ``scheduler/`` files; for a hub id
    (``None`` = ``$RETARGET_BASE_MODEL`` or the public SD1.5 repository) the id itself.
    """
    from retarget.jobs.weights import WEIGHT_FILES
    from retarget.models.loading import BASE_SUBFOLDERS, DEFAULT_BASE_MODEL

    models = Path(models).expanduser()
    files = {item.path: _stat_entry(models / item.path) for item in WEIGHT_FILES}
    hashes = {name: file_sha256(models / name) for name in ADAPTER_FILES if _stat_entry(models / name) is not None}
    base_name = base_model or os.environ.get("RETARGET_BASE_MODEL") or DEFAULT_BASE_MODEL
    base_dir = Path(base_name).expanduser()
    if base_dir.is_dir():
        base = {}
        for sub in BASE_SUBFOLDERS:
            for path in sorted((base_dir / sub).rglob("*")):
                if path.is_file():
                    base[path.relative_to(base_dir).as_posix()] = _stat_entry(path)
    else:
        base = str(base_name)
    return {"files": files, "sha256": hashes, "base": base}
