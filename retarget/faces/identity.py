"""Identity embeddings: the published ``antelopev2/arcface.onnx`` on onnxruntime.

A face is aligned to the 112x112 ArcFace crop (:func:`~retarget.faces.alignment.arcface_transform`), fed as RGB
normalised ``(v - 127.5) / 127.5`` in NCHW (insightface's preprocessing for PyTorch-exported recognition models;
models exported from MXNet, recognised by a ``Sub``/``Mul`` pair among their first nodes, normalise internally
and get raw 0-255 values, as insightface does), and the 512-d output is L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import WeightsError
from .alignment import arcface_transform
from .onnx_session import open_onnx_session

__all__ = ["ARCFACE_FILENAME", "EMBEDDING_SIZE", "ArcFaceEncoder", "robust_mean_embedding"]

ARCFACE_FILENAME = "arcface.onnx"
"""File name of the published recognition model inside ``<models_dir>/antelopev2``."""

EMBEDDING_SIZE = 512


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _normalises_internally(model_path: str | os.PathLike) -> bool:
    """True for MXNet-exported recognition models that subtract and scale inside the graph."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in names)
    return has_sub and has_mul


class ArcFaceEncoder:
    """ArcFace recognition model: aligned crops to L2-normalised 512-d embeddings.

    Args:
        model_path: ``arcface.onnx`` ([N, 3, 112, 112] -> [N, 512]).
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: crops per onnxruntime call (models with a fixed batch of 1 are run one crop at a time).

    Raises:
        WeightsError: missing/unloadable file, or input/output shapes that are not [N, 3, 112, 112] -> [N, 512].
    """

    def __init__(self, model_path: str | os.PathLike, device: str | None = None, batch_size: int = 64) -> None:
        self.model_path = model_path
        self.session = open_onnx_session(model_path, "ArcFace recognition model", device)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise WeightsError(f"{model_path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        in_shape, out_shape = inputs[0].shape, outputs[0].shape
        if len(in_shape) != 4 or list(in_shape[1:]) != [3, 112, 112]:
            raise WeightsError(f"{model_path}: expected input [N, 3, 112, 112], got {in_shape}")
        if len(out_shape) != 2 or out_shape[1] != EMBEDDING_SIZE:
            raise WeightsError(f"{model_path}: expected output [N, {EMBEDDING_SIZE}], got {out_shape}")
        self.input_name = inputs[0].name
        self.batch_size = 1 if in_shape[0] == 1 else int(batch_size)
        raw = _normalises_internally(model_path)
        self.input_mean, self.input_std = (0.0, 1.0) if raw else (127.5, 127.5)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embed ArcFace-aligned crops.

        Args:
            crops: RGB uint8 [N, 112, 112, 3] (or one [112, 112, 3]).

        Returns:
            float32 [N, 512] (or [512]), each row with unit L2 norm.
        """
        crops = np.asarray(crops)
        single = crops.ndim == 3
        if single:
            crops = crops[None]
        if crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"expected ArcFace crops [N, 112, 112, 3], got {crops.shape}")
        tensor = ((crops.astype(np.float32) - self.input_mean) / self.input_std).transpose(0, 3, 1, 2)
        chunks = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(tensor[i : i + self.batch_size])})[0]
            for i in range(0, len(tensor), self.batch_size)
        ]
        embeddings = _normalise_rows(np.concatenate(chunks).astype(np.float32))
        return embeddings[0] if single else embeddings

    def embed(self, image: np.ndarray, keypoints: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Embed one or several faces of one RGB uint8 image [H, W, 3].

        Args:
            keypoints: [5, 2] for one face or [N, 5, 2] for several, frame pixels.

        Returns:
            float32 [512] or [N, 512], unit L2 norm.
        """
        keypoints = np.asarray(keypoints, dtype=np.float32)
        single = keypoints.ndim == 2
        batch = keypoints[None] if single else keypoints
        crops = np.stack([arcface_transform(points).warp(image) for points in batch]) if len(batch) else np.zeros(
            (0, 112, 112, 3), np.uint8
        )
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        embeddings = self.embed_crops(crops)
        return embeddings[0] if single else embeddings


def robust_mean_embedding(embeddings: np.ndarray, keep_fraction: float = 0.8, iterations: int = 3) -> np.ndarray:
    """Mean identity over many frames that ignores outliers (blur, occlusion, profile views, a wrong face).

    Repeatedly keeps the ``keep_fraction`` of embeddings most similar (cosine) to the current mean, starting from
    the per-dimension median direction, and returns the normalised mean of those.

    Args:
        embeddings: float [N, 512], N >= 1 (rows are L2-normalised first).
        keep_fraction: fraction in (0, 1] of frames kept each round.
        iterations: number of trimming rounds.

    Returns:
        float32 [512] with unit L2 norm.
    """
    embeddings = _normalise_rows(np.asarray(embeddings, dtype=np.float32))
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"expected embeddings [N, D] with N >= 1, got {embeddings.shape}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    center = _normalise_rows(np.median(embeddings, axis=0))
    keep_count = max(1, int(round(len(embeddings) * keep_fraction)))
    for _ in range(iterations):
        similarity = embeddings @ center
        kept = embeddings[np.argsort(-similarity, kind="stable")[:keep_count]]
        center = _normalise_rows(kept.mean(axis=0))
    return center
