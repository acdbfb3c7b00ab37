"""Opening ONNX models with onnxruntime on the best available execution provider."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..devices import cuda_device_index, resolve_device
from ..errors import InputError, WeightsError

__all__ = ["execution_providers", "open_onnx_session"]

logger = logging.getLogger(__name__)


def execution_providers(device: str | None = None) -> list:
    """Execution providers for onnxruntime, best first.

    Args:
        device: ``None`` (CUDA when onnxruntime has it, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            ``None`` and ``"cuda"`` pick the GPU as :func:`retarget.devices.resolve_device` does (the launcher's
            local rank under ``accelerate launch`` / ``torchrun``, else 0).

    Returns:
        A providers list for :class:`onnxruntime.InferenceSession`; always ends with the CPU provider. The CUDA
        provider comes with its options: ``("CUDAExecutionProvider", {"device_id": N})``.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wants_cpu = device is not None and str(device).startswith("cpu")
    if wants_cpu or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    text = str(device) if device is not None else ""
    if text in ("", "cuda"):
        try:
            text = resolve_device(device)
        except InputError:  # torch without CUDA next to onnxruntime with it
            text = "cuda"
    index = cuda_device_index(text)
    return [("CUDAExecutionProvider", {"device_id": index if index is not None else 0}), "CPUExecutionProvider"]


def open_onnx_session(path: str | os.PathLike, what: str, device: str | None = None):
    """Open an ONNX model file, raising one clear :class:`WeightsError` when it is missing or unloadable.

    Args:
        path: the ``.onnx`` file.
        what: a short description used in messages, e.g. ``"ArcFace recognition model"``.
        device: see :func:`execution_providers`.
    """
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=execution_providers(device))
    except Exception as exc:  # onnxruntime raises several unrelated exception types for bad files
        raise WeightsError(f"cannot load {what} from {path}: {exc}") from exc
    logger.debug("opened %s %s on %s", what, path, session.get_providers()[0])
    return session
