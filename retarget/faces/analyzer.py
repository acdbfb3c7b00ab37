"""One object that loads the face models once per run and analyses frames: :class:`FaceAnalyzer`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import NoFaceError, WeightsError
from .alignment import AlignTransform, arcface_transform, ffhq_transform
from .detection import Detector, Face, load_detector
from .expressions import SMIRK_FILENAME, ExpressionExtractor
from .identity import ARCFACE_FILENAME, IdentityEncoder
from .image_io import load_image

__all__ = ["FaceAnalyzer"]

logger = logging.getLogger(__name__)


class FaceAnalyzer:
    """Detection, alignment, identity and expressions with models loaded once.

    Images are RGB uint8 [H, W, 3]; keypoints float32 [5, 2] pixels in insightface order.

    Args:
        detector: any :class:`~retarget.faces.detection.Detector`.
        identity: an :class:`~retarget.faces.identity.IdentityEncoder`, or ``None`` if ``arcface.onnx`` is absent.
        expressions: an :class:`~retarget.faces.expressions.ExpressionExtractor`, or ``None`` if SMIRK is absent.
        models_dir: where the models came from (for messages).
    """

    def __init__(
        self,
        detector: Detector,
        identity: IdentityEncoder | None = None,
        expressions: ExpressionExtractor | None = None,
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.detector = detector
        self.identity_encoder = identity
        self.expression_extractor = expressions
        self.models_dir = None if models_dir is None else Path(models_dir)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None, device: str | None = None) -> "FaceAnalyzer":
        """Load what the published ``models/`` folder holds.

        * detector: ``antelopev2/scrfd_10g_bnkps.onnx`` if present, else the offline MTCNN (logged);
        * identity: ``antelopev2/arcface.onnx`` if present (else :meth:`identity` raises :class:`WeightsError`);
        * expressions: ``smirk/SMIRK_em1.pt`` if present (else :meth:`expressions` raises), with MediaPipe crops
          when ``smirk/face_landmarker.task`` and ``mediapipe`` are available.

        Args:
            models_dir: the models folder, or ``None`` for detection and alignment only.
            device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

        Raises:
            WeightsError: a present file cannot be loaded or has the wrong layout.
        """
        detector = load_detector(models_dir, device=device)
        identity = expressions = None
        if models_dir is not None:
            arcface = Path(models_dir) / "antelopev2" / ARCFACE_FILENAME
            if arcface.is_file():
                identity = IdentityEncoder(arcface, device=device)
            if (Path(models_dir) / "smirk" / SMIRK_FILENAME).is_file():
                expressions = ExpressionExtractor.from_models_dir(models_dir, device=device)
        return cls(detector, identity, expressions, models_dir)

    def _expected(self, relative: str) -> str:
        return str(self.models_dir / relative) if self.models_dir is not None else f"<models>/{relative}"

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image [H, W, 3], largest first."""
        return self.detector.detect(image)

    @staticmethod
    def align_ffhq(image: np.ndarray, keypoints: np.ndarray, size: int = 512) -> tuple[np.ndarray, AlignTransform]:
        """FFHQ-style crop (RGB uint8 [size, size, 3]) and its transform, for generation and references."""
        transform = ffhq_transform(keypoints, size)
        return transform.warp(image), transform

    @staticmethod
    def align_arcface(image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, AlignTransform]:
        """ArcFace crop (RGB uint8 [112, 112, 3]) and its transform."""
        transform = arcface_transform(keypoints)
        return transform.warp(image), transform

    def identity(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """L2-normalised ArcFace embeddings: [5, 2] -> float32 [512]; [N, 5, 2] -> [N, 512].

        Raises:
            WeightsError: ``antelopev2/arcface.onnx`` was not found.
        """
        if self.identity_encoder is None:
            raise WeightsError(f"ArcFace recognition model not found: {self._expected('antelopev2/' + ARCFACE_FILENAME)}")
        return self.identity_encoder.embed(image, keypoints)

    def expressions(self, images: Sequence[np.ndarray], keypoints: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """SMIRK's 55 FLAME values per frame, float32 [N, 55] (one face per frame, given by [N, 5, 2] keypoints).

        Raises:
            WeightsError: ``smirk/SMIRK_em1.pt`` was not found.
        """
        if self.expression_extractor is None:
            raise WeightsError(f"SMIRK checkpoint not found: {self._expected('smirk/' + SMIRK_FILENAME)}")
        return self.expression_extractor.extract(images, keypoints)

    def largest_face(self, image: np.ndarray, source: str = "image") -> Face:
        """The largest detected face.

        Raises:
            NoFaceError: naming ``source`` when there is none.
        """
        faces = self.detect(image)
        if not faces:
            raise NoFaceError(f"no face found in {source}")
        return faces[0]

    def photo_identity(self, photo: str | os.PathLike | np.ndarray) -> np.ndarray:
        """Identity embedding float32 [512] of the largest face in a photo (a file path or an RGB uint8 array).

        Raises:
            InputError: the file is unreadable. NoFaceError: no face in it. WeightsError: no ArcFace model.
        """
        source = "the given image" if isinstance(photo, np.ndarray) else f"identity photo {photo}"
        image = photo if isinstance(photo, np.ndarray) else load_image(photo)
        face = self.largest_face(image, source)
        return self.identity(image, face.keypoints)
