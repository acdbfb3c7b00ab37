"""Opening ONNX models with onnxruntime on the best available execution provider."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..devices import cuda_device_index, resolve_device
from ..errors import InputError, WeightsError

__all__ = ["execution_providers", "open_onnx_session", "pooled_session_threading"]

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


def open_onnx_session(path: str | os.PathLike, what: str, device: str | None = None,
                      intra_op_threads: int | None = None, spinning: bool = False):
    """Open an ONNX model file, raising one clear :class:`WeightsError` when it is missing or unloadable.

    By default the session's CPU threads do not busy-wait for work between calls, as onnxruntime's own default
    has them do, taking cores from the stages running beside the face models (the render, SMIRK, decoding).

    Args:
        path: the ``.onnx`` file.
        what: a short description used in messages, e.g. ``"ArcFace recognition model"``.
        device: see :func:`execution_providers`.
        intra_op_threads: CPU threads one call may use; ``None``: onnxruntime's default (one per physical core).
            Give 1 to a session that several threads call at once (each call then keeps to its own thread).
        spinning: let the session's threads busy-wait between calls (onnxruntime's default), for comparison.
    """
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if intra_op_threads is not None:
        options.intra_op_num_threads = int(intra_op_threads)
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=execution_providers(device))
    except Exception as exc:  # onnxruntime raises several unrelated exception types for bad files
        raise WeightsError(f"cannot load {what} from {path}: {exc}") from exc
    logger.debug("opened %s %s on %s", what, path, session.get_providers()[0])
    return session


def pooled_session_threading(onnxruntime_threading: bool = False) -> dict:
    """:func:`open_onnx_session` keywords for a model that a pool of threads calls at once (the face detectors,
    see :meth:`~retarget.faces.detection.Detector.detect_many`): one CPU thread per call, since the pool is the
    parallelism. ``onnxruntime_threading``: onnxruntime's defaults instead (one thread per physical core for each
    call, busy-waiting between calls), to compare the two (``eval.bench_detection --sessions``)."""
    return dict(intra_op_threads=None, spinning=True) if onnxruntime_threading else dict(intra_op_threads=1)
