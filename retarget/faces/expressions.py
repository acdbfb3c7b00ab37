"""FLAME expression parameters per frame with SMIRK's expression encoder (``smirk/SMIRK_em1.pt``).

The encoder is a timm ``tf_mobilenetv3_large_minimal_100`` backbone (``features_only=True``, last feature map,
960 channels), global average pooling and ``expression_layers.0`` = Linear(960, 55). Its 55 outputs are returned
in the published order and ranges:

* ``[0:50]``  expression coefficients (unbounded),
* ``[50:52]`` eyelid closure, clamped to [0, 1],
* ``[52:55]`` jaw: ``relu`` of the first (opening, >= 0), the other two clamped to [-0.2, 0.2].

The input is the 224x224 SMIRK crop (see :mod:`retarget.faces.smirk_crop`) as RGB floats in [0, 1] (the
bilinear-warped 0-255 values truncated to integers, as the published crop code's ``astype(uint8)`` does).
SMIRK's own demo feeds RGB; Arc2Face's expression demo passes its RGB photo through a ``BGR2RGB`` conversion
after cropping and so feeds BGR. RGB is the default here; ``channel_order="bgr"`` reproduces the demo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device
from ..errors import WeightsError
from ..models.formats import load_torch_pickle
from .smirk_crop import (
    LANDMARKER_FILENAME,
    SMIRK_CROP_SIZE,
    MediaPipeLandmarker,
    keypoint_crop_transform,
    landmark_crop_transform,
)

__all__ = [
    "EXPRESSION_SIZE",
    "ExpressionExtractor",
    "SMIRK_BACKBONE",
    "SMIRK_FILENAME",
    "SMIRK_KEY_PREFIX",
    "SmirkExpressionEncoder",
    "load_smirk_encoder",
]

logger = logging.getLogger(__name__)

SMIRK_FILENAME = "SMIRK_em1.pt"
SMIRK_KEY_PREFIX = "smirk_encoder.expression_encoder."
SMIRK_BACKBONE = "tf_mobilenetv3_large_minimal_100"
EXPRESSION_SIZE = 55
N_EXPRESSION, N_EYELID, N_JAW = 50, 2, 3


class SmirkExpressionEncoder(nn.Module):
    """SMIRK's expression encoder: [N, 3, 224, 224] RGB in [0, 1] -> [N, 55] (see the module notes for ranges).

    Built with random weights; load the published ones with :func:`load_smirk_encoder`. Submodule names
    (``encoder``, ``expression_layers``) match the checkpoint's keys after the prefix.
    """

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model(SMIRK_BACKBONE, pretrained=False, features_only=True)
        features = self.encoder.feature_info.channels()[-1]
        self.expression_layers = nn.Sequential(nn.Linear(features, EXPRESSION_SIZE))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)[-1]
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        raw = self.expression_layers(pooled)
        return constrain_expression(raw)


def constrain_expression(raw: torch.Tensor) -> torch.Tensor:
    """Apply the published output constraints to raw head outputs [..., 55] (eyelid clamp, jaw relu/clamp)."""
    expression = raw[..., :N_EXPRESSION]
    eyelid = raw[..., N_EXPRESSION : N_EXPRESSION + N_EYELID].clamp(0.0, 1.0)
    jaw_open = F.relu(raw[..., N_EXPRESSION + N_EYELID : N_EXPRESSION + N_EYELID + 1])
    jaw_other = raw[..., N_EXPRESSION + N_EYELID + 1 :].clamp(-0.2, 0.2)
    return torch.cat([expression, eyelid, jaw_open, jaw_other], dim=-1)


def load_smirk_encoder(path: str | os.PathLike, device: str | torch.device | None = None) -> SmirkExpressionEncoder:
    """Load the expression encoder from a ``SMIRK_em1.pt``-format file (keys under ``smirk_encoder.expression_encoder.``).

    Loaded with ``torch.load(..., weights_only=True)``; every key and shape of the encoder must be present and
    match (other sub-models in the file are ignored).

    Args:
        path: the checkpoint.
        device: torch device; ``None`` = :func:`retarget.devices.resolve_device` (the launcher's GPU, else CUDA
            when available, else the CPU).

    Returns:
        The encoder in eval mode on ``device``.

    Raises:
        WeightsError: missing or unreadable file, no keys under the prefix, missing/unexpected keys or wrong shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"SMIRK checkpoint not found: {path}")
    checkpoint = load_torch_pickle(path)  # one WeightsError line for a file that is not a dict of tensors
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        checkpoint = checkpoint["state_dict"]
    state = {k[len(SMIRK_KEY_PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(SMIRK_KEY_PREFIX)}
    if not state:
        raise WeightsError(f"SMIRK checkpoint {path} has no keys under '{SMIRK_KEY_PREFIX}'")
    encoder = SmirkExpressionEncoder()
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} with wrong shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise WeightsError(
            f"SMIRK checkpoint {path} does not match the {SMIRK_BACKBONE} expression encoder under "
            f"'{SMIRK_KEY_PREFIX}': " + "; ".join(details)
        )
    encoder.load_state_dict(state, strict=True)
    return encoder.to(resolve_device(None) if device is None else device).eval()


class ExpressionExtractor:
    """Frames + keypoints -> [N, 55] FLAME expression values, batched.

    Args:
        encoder: a loaded :class:`SmirkExpressionEncoder`.
        landmarker: optional :class:`MediaPipeLandmarker` for the published crop; without one (or when it finds no
            face) the crop comes from the keypoints.
        batch_size: crops per encoder call.
        channel_order: ``"rgb"`` (SMIRK's convention, default) or ``"bgr"`` (what Arc2Face's demo feeds).
    """

    def __init__(
        self,
        encoder: SmirkExpressionEncoder,
        landmarker: MediaPipeLandmarker | None = None,
        batch_size: int = 32,
        channel_order: str = "rgb",
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.encoder = encoder
        self.landmarker = landmarker
        self.batch_size = int(batch_size)
        self.channel_order = channel_order
        self.device = next(encoder.parameters()).device

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, device: str | None = None, **kwargs) -> "ExpressionExtractor":
        """Load ``<models_dir>/smirk/SMIRK_em1.pt``, plus MediaPipe when ``face_landmarker.task`` and the package exist
        (the published crop); ``kwargs`` go to the constructor. Logs (INFO, logger ``retarget.faces.expressions``)
        one line naming the crop and channel order used."""
        models_dir = Path(models_dir)
        encoder = load_smirk_encoder(models_dir / "smirk" / SMIRK_FILENAME, device=device)
        task = models_dir / "smirk" / LANDMARKER_FILENAME
        landmarker = MediaPipeLandmarker(task) if MediaPipeLandmarker.available(models_dir) else None
        extractor = cls(encoder, landmarker, **kwargs)
        if landmarker is not None:
            crop = f"MediaPipe landmarks ({task})"
        elif task.is_file():
            crop = "the detector's keypoints (mediapipe is not installed: pip install mediapipe)"
        else:
            crop = f"the detector's keypoints ({task} not found)"
        logger.info("SMIRK crop: from %s, %s input", crop, extractor.channel_order.upper())
        return extractor

    def crop(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """The SMIRK crop of one face: float32 [224, 224, 3], RGB values in [0, 1] (multiples of 1/255).

        Args:
            image: RGB uint8 [H, W, 3].
            keypoints: [5, 2] pixels of the face.
        """
        transform = None
        if self.landmarker is not None:
            landmarks = self.landmarker.landmarks(image, keypoints)
            if landmarks is not None:
                transform = landmark_crop_transform(landmarks)
        if transform is None:
            transform = keypoint_crop_transform(keypoints)
        pixels = np.floor(transform.warp(image, dtype=np.float32))
        return pixels / np.float32(255.0)

    @torch.inference_mode()
    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        """Run the encoder on SMIRK crops.

        Args:
            crops: float32 [N, 224, 224, 3] RGB in [0, 1] (as from :meth:`crop`).

        Returns:
            float32 [N, 55] in the published order and ranges.
        """
        crops = np.asarray(crops, dtype=np.float32)
        if crops.ndim != 4 or crops.shape[1:] != (SMIRK_CROP_SIZE, SMIRK_CROP_SIZE, 3):
            raise ValueError(f"expected SMIRK crops [N, 224, 224, 3], got {crops.shape}")
        if self.channel_order == "bgr":
            crops = crops[..., ::-1]
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + self.batch_size].transpose(0, 3, 1, 2)))
            outputs.append(self.encoder(batch.to(self.device)).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, EXPRESSION_SIZE), np.float32)

    def extract(self, images: Sequence[np.ndarray], keypoints: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Expression values for one face per image.

        Args:
            images: N RGB uint8 frames [H, W, 3] (sizes may differ).
            keypoints: [N, 5, 2] pixels, the face to read in each frame.

        Returns:
            float32 [N, 55].
        """
        if len(images) != len(keypoints):
            raise ValueError(f"got {len(images)} images but {len(keypoints)} keypoint sets")
        results = []
        for start in range(0, len(images), self.batch_size):
            crops = np.stack(
                [self.crop(image, points) for image, points in zip(images[start : start + self.batch_size], keypoints[start : start + self.batch_size])]
            )
            results.append(self.encode_crops(crops))
        return np.concatenate(results) if results else np.zeros((0, EXPRESSION_SIZE), np.float32)
