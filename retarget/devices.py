"""The device a job runs on: one answer for torch (the pipeline, SMIRK) and onnxruntime (detector, ArcFace).

Under a multi-process launcher (``accelerate launch``, ``torchrun``, MPI) every process renders on its own GPU,
picked by the launcher's local rank (the process's number on its machine): ``LOCAL_RANK`` (set by torchrun and
accelerate), else ``OMPI_COMM_WORLD_LOCAL_RANK`` / ``MV2_COMM_WORLD_LOCAL_RANK`` / ``MPI_LOCALRANKID``.
"""

from __future__ import annotations

import os

from retarget.errors import InputError

#: Environment variables holding the launcher's local rank, first found wins.
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def launcher_local_rank() -> int | None:
    """This process's local rank from the launcher's environment (see :data:`LOCAL_RANK_VARIABLES`), or None
    when no launcher variable is set (or it is not a non-negative integer)."""
    for name in LOCAL_RANK_VARIABLES:
        text = os.environ.get(name, "").strip()
        if text.isdigit():
            return int(text)
    return None


def resolve_device(device: str | None = None) -> str:
    """The torch device string for a job: ``"cpu"``, ``"cuda:N"`` or another explicit device.

    * ``device`` given (``--device``): used as is, checked (unknown names and CUDA devices that do not exist
      raise :class:`InputError`). A bare ``"cuda"`` under a launcher means this process's GPU, ``cuda:LOCAL_RANK``.
    * ``None`` with CUDA available: ``cuda:LOCAL_RANK`` under a launcher, else ``cuda:0``.
    * ``None`` without CUDA: ``"cpu"``.

    The local rank is taken modulo the number of visible GPUs, so a launcher that already restricts each process
    to one GPU (``CUDA_VISIBLE_DEVICES``) gets ``cuda:0`` in every process.
    """
    import torch

    if device is not None and str(device).strip():
        text = str(device).strip()
        try:
            parsed = torch.device(text)
        except (RuntimeError, ValueError) as error:
            raise InputError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from error
        if parsed.type != "cuda":
            return str(parsed)
        if not torch.cuda.is_available():
            raise InputError(f"--device {text}: torch sees no CUDA device")
        count = torch.cuda.device_count()
        if parsed.index is None:
            rank = launcher_local_rank()
            return f"cuda:{0 if rank is None else rank % count}"
        if parsed.index >= count:
            raise InputError(f"--device {text}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
        return f"cuda:{parsed.index}"
    if torch.cuda.is_available():
        rank = launcher_local_rank()
        return f"cuda:{0 if rank is None else rank % max(1, torch.cuda.device_count())}"
    return "cpu"


def cuda_device_index(device: str | None) -> int | None:
    """The CUDA device number of a device string (``"cuda"`` = 0, ``"cuda:N"`` = N), None for other devices."""
    text = str(device) if device is not None else ""
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    return None


#: Frames per diffusion call where :func:`default_batch_size` finds no GPU with room for more.
SMALL_BATCH_SIZE = 8
#: Frames per diffusion call on a GPU with at least :data:`LARGE_BATCH_MIN_GIB` of memory.
LARGE_BATCH_SIZE = 16
#: GPU memory (GiB, the card's total) from which :func:`default_batch_size` picks :data:`LARGE_BATCH_SIZE`.
LARGE_BATCH_MIN_GIB = 12.0


def default_batch_size(device: str) -> int:
    """Frames per diffusion call when the user gives none (``--batch-size``), for a resolved ``device``.

    :data:`LARGE_BATCH_SIZE` (16) on a CUDA device with at least :data:`LARGE_BATCH_MIN_GIB` GiB: larger batches keep
    a GPU busier (on one H100, the pipeline at batch 8 / 16 / 32 rendered 4.65 / 4.93 / 5.14 frames/s), and at 16
    the published model in bf16 peaked under 6 GB on an H200. :data:`SMALL_BATCH_SIZE` (8) on smaller GPUs and
    on every other device. The results do not depend on it: each frame's noise comes from its frame number.
    """
    index = cuda_device_index(device)
    if index is None:
        return SMALL_BATCH_SIZE
    import torch

    total_gib = torch.cuda.get_device_properties(index).total_memory / 2**30
    return LARGE_BATCH_SIZE if total_gib >= LARGE_BATCH_MIN_GIB else SMALL_BATCH_SIZE


def use_device(device: str) -> None:
    """Make ``device`` (a resolved ``cuda:N``) the current CUDA device of this process, so that work torch places
    on "the current GPU" (CUDA context, cuDNN handles) lands on the process's own GPU; no-op for other devices."""
    index = cuda_device_index(device)
    if index is not None:
        import torch

        torch.cuda.set_device(index)
