"""The face models, loaded once and shared by the CLI jobs, training and evaluation: :class:`FaceModels`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import NoFaceError, WeightsError
from .alignment import AlignTransform, arcface_transform, ffhq_transform
from .detection import Detector, Face, load_detector
from .image_io import load_image

__all__ = ["FaceModels"]

log = logging.getLogger(__name__)


class FaceModels:
    """Detection, alignment, identity and expressions, each model loaded on first use and kept.

    Images are RGB uint8 ``[H, W, 3]``; keypoints float32 ``[5, 2]`` pixels in insightface order.

    * ``detector``: SCRFD (``antelopev2/scrfd_10g_bnkps.onnx``) when the models folder has it, else the bundled
      MTCNN (logged);
    * ``identity``: the ArcFace model (``antelopev2/arcface.onnx``), an
      :class:`~retarget.faces.identity.ArcFaceEncoder` (``identity.embed(image, keypoints)``);
    * ``expressions``: SMIRK (``smirk/SMIRK_em1.pt``), an :class:`~retarget.faces.expressions.ExpressionExtractor`
      (``expressions.extract(images, keypoints)``) fed ``channel_order`` "rgb" or "bgr", with MediaPipe crops when
      ``smirk/face_landmarker.task`` and ``mediapipe`` are available.

    Args:
        models_dir: the published models folder, or ``None`` for detection (MTCNN) and alignment only.
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: SMIRK crops per forward pass.
        channel_order: the SMIRK input's channel order, ``"rgb"`` or ``"bgr"``.

    Missing or broken files raise :class:`~retarget.errors.WeightsError` (naming the file) when first needed.
    """

    def __init__(self, models_dir: str | os.PathLike | None, device: str | None = None, batch_size: int = 32,
                 channel_order: str = "rgb") -> None:
        self.models_dir = None if models_dir is None else Path(models_dir)
        self.device = device
        self.batch_size = batch_size
        self.channel_order = channel_order
        self._detector: Detector | None = None
        self._identity = self._expressions = None

    def _needs_folder(self, what: str, relative: str) -> Path:
        if self.models_dir is None:
            raise WeightsError(f"{what} not found: no models folder given (expected <models>/{relative})")
        return self.models_dir / relative

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = load_detector(self.models_dir, device=self.device)
        return self._detector

    @property
    def identity(self):
        """The ArcFace encoder (:class:`~retarget.faces.identity.ArcFaceEncoder`)."""
        if self._identity is None:
            from .identity import ARCFACE_FILENAME, ArcFaceEncoder

            path = self._needs_folder("ArcFace recognition model", f"antelopev2/{ARCFACE_FILENAME}")
            self._identity = ArcFaceEncoder(path, device=self.device)
        return self._identity

    @property
    def expressions(self):
        """The SMIRK extractor (:class:`~retarget.faces.expressions.ExpressionExtractor`)."""
        if self._expressions is None:
            from .expressions import SMIRK_FILENAME, ExpressionExtractor

            self._needs_folder("SMIRK checkpoint", f"smirk/{SMIRK_FILENAME}")
            self._expressions = ExpressionExtractor.from_models_dir(self.models_dir, device=self.device,
                                                                    batch_size=self.batch_size,
                                                                    channel_order=self.channel_order)
        return self._expressions

    def load(self, *names: str) -> "FaceModels":
        """Load and check the named models now (``"detector"``, ``"identity"``, ``"expressions"``; all three by
        default), so that a missing or broken file fails before any work. Returns ``self``."""
        for name in names or ("detector", "identity", "expressions"):
            if name not in ("detector", "identity", "expressions"):
                raise ValueError(f"unknown face model {name!r}")
            getattr(self, name)
        return self

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image ``[H, W, 3]``, largest first."""
        return self.detector.detect(image)

    @staticmethod
    def align_ffhq(image: np.ndarray, keypoints: np.ndarray, size: int = 512) -> tuple[np.ndarray, AlignTransform]:
        """FFHQ-style crop (RGB uint8 ``[size, size, 3]``) and its transform, for generation and references."""
        transform = ffhq_transform(keypoints, size)
        return transform.warp(image), transform

    @staticmethod
    def align_arcface(image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, AlignTransform]:
        """ArcFace crop (RGB uint8 ``[112, 112, 3]``) and its transform."""
        transform = arcface_transform(keypoints)
        return transform.warp(image), transform

    def largest_face(self, image: np.ndarray, source: str = "image") -> Face:
        """The largest detected face; :class:`~retarget.errors.NoFaceError` naming ``source`` when there is none."""
        faces = self.detect(image)
        if not faces:
            raise NoFaceError(f"no face found in {source}")
        return faces[0]

    def photo_identity(self, photo: str | os.PathLike | np.ndarray) -> np.ndarray:
        """ArcFace embedding float32 ``[512]`` (unit norm) of the largest face in a photo (a path or an RGB uint8
        array). Raises InputError (unreadable file), NoFaceError (no face) or WeightsError (no ArcFace model)."""
        source = "the given image" if isinstance(photo, np.ndarray) else f"identity photo {photo}"
        image = photo if isinstance(photo, np.ndarray) else load_image(photo)
        face = self.largest_face(image, source)
        return self.identity.embed(image, face.keypoints)
