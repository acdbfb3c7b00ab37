"""A complete set of random weights in the published formats, written in one step (``retarget weights random``).

:func:`write_random_weights` writes what every command needs: the ``models/`` folder of the published layout (the
Arc2Face UNet, the identity encoder, both adapters, ArcFace and SMIRK) and an SD1.5-style ``base/`` folder
(``vae/``, ``tokenizer/``, ``scheduler/``). The bundled MTCNN detects faces (no SCRFD file), so faces are found in
real footage; ArcFace, SMIRK and the diffusion model are random, so renders are coloured noise. They are for trying
the commands and measuring speed where the published files cannot be downloaded, never for results.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from ..errors import InputError
from ..video.atomic import partial_path, partial_target
from .checkpoints import SIZES, RandomCheckpoint, write_random_checkpoint
from .face_models import write_random_face_models

__all__ = ["write_random_weights"]


def write_random_weights(folder: str | os.PathLike, size: str = "tiny", seed: int = 0) -> RandomCheckpoint:
    """Write ``folder/models`` and ``folder/base`` with random weights of ``size`` and return their paths.

    ``size``: ``"tiny"`` (32x32 images, seconds per clip on a CPU; about 25 MB on disk) or ``"full"`` (the
    published shapes: SD1.5 UNet and VAE, CLIP ViT-L encoder, rank-128 reference LoRA, stored in fp16 like the
    published UNet; 512x512 images; about 2.2 GB). The same ``seed`` gives the same files.

    ``folder`` must not exist or be empty; its contents appear only once everything is written (the files go into
    a hidden sibling folder first, which is removed if writing fails; one a killed process left is removed by a
    later write). Raises :class:`~retarget.errors.InputError` for a non-empty ``folder``, a negative ``seed``, or a
    place that cannot be written (the operating system's reason in the message).
    The returned paths are absolute.
    """
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    folder = Path(folder).absolute()  # "." has a name then, and the printed paths work from anywhere
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder} exists and is not an empty folder: give a new folder for the random weights")
    above = next(p for p in folder.parents if p.exists())  # the root exists
    if not above.is_dir():
        raise InputError(f"{folder}: {above} is a file, not a folder")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(folder)
        partial = partial_path(folder)  # a write that fails names ``folder`` (see video.atomic.partial_target)
        try:
            written = write_random_checkpoint(partial, size=size, seed=seed,
                                              dtype=torch.float16 if size == "full" else torch.float32)
            write_random_face_models(written.models_dir, seed=seed)
            if folder.exists():  # an empty folder (perhaps the working directory): move the two folders into it
                for child in (written.base_dir, written.models_dir):
                    child.rename(folder / child.name)
                partial.rmdir()
            else:
                partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    except OSError as error:  # e.g. a read-only place, a file where a folder should be, a full disk
        raise InputError(f"{folder}: cannot write the random weights there ({error.strerror or error})") from error
    return RandomCheckpoint(models_dir=folder / "models", base_dir=folder / "base")


#: Seconds after which a partial folder of an earlier write is taken as left by a killed process.
STALE_PARTIAL_S = 600


def _remove_stale_partials(folder: Path) -> None:
    """Remove the partial folders of earlier writes of ``folder`` that a killed process left (older than
    :data:`STALE_PARTIAL_S`; a full-size set is 2.2 GB)."""
    for path in folder.parent.glob(f".{folder.name}.partial-*"):
        if path.is_dir() and partial_target(path) == folder and time.time() - path.stat().st_mtime > STALE_PARTIAL_S:
            shutil.rmtree(path, ignore_errors=True)
