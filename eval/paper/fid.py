"""FID between generated images and real ones, only with Inception-v3 weights already on this machine.

Features: torchvision's Inception-v3 architecture, the 2048-d pooled features (the input to ``fc``), images resized
to 299x299 (bilinear, antialiased) and normalised with the ImageNet mean and standard deviation. Weights come from
``--inception FILE`` (a state dict of that architecture, e.g. torchvision's ``inception_v3_google-*.pth``; the
``fc`` and ``AuxLogits`` entries are ignored) or, without it, torchvision's file in the local torch hub cache
(``$TORCH_HOME/hub/checkpoints``). Nothing is downloaded: with no weights, :func:`find_inception_weights` returns
None and the protocol leaves the FID column out.

The FID is the Fréchet distance between two Gaussians fitted to the feature sets,
``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (:func:`frechet_distance`). Its numbers are comparable between
runs of this tool with the same weights and image counts, not to FIDs computed with other feature extractors; it
is biased upwards for small sets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from retarget.errors import WeightsError

FEATURES = 2048
INPUT_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """``path`` when given (a missing file is a :class:`WeightsError`), else torchvision's Inception-v3 file in
    the local torch hub cache, else None."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"--inception: no such file: {path}")
        return path
    import torch

    cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob("inception_v3_google-*.pth"))
    return cached[0] if cached else None


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (means ``[D]``, covariances ``[D, D]``).

    When the product of the covariances is singular (fewer samples than dimensions), ``eps`` is added to both
    diagonals before the matrix square root, as the reference implementation does; the imaginary part that
    rounding leaves in the square root is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, rows are samples) of ``features [N, D]``, N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature rows, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


class InceptionFeatures:
    """Pooled Inception-v3 features of RGB uint8 images: ``InceptionFeatures(weights)(images) -> [N, 2048]``.

    ``weights``: a state-dict file (see the module doc), loaded with ``weights_only=True``; a file that does not
    fit the architecture is a :class:`WeightsError` naming it. ``device``: torch device string.
    """

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", batch_size: int = 32):
        import torch
        import torchvision

        from retarget.models.formats import load_torch_pickle

        self.device = torch.device(device)
        self.batch_size = batch_size
        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                transform_input=False)
        state = load_torch_pickle(weights)  # one WeightsError line for a file that is not a dict of tensors
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
        expected = {k for k in model.state_dict() if not k.startswith("fc.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise WeightsError(f"{weights}: not torchvision's Inception-v3 layout "
                               f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise WeightsError(f"{weights}: Inception-v3 weights of the wrong shapes ({str(error).splitlines()[0]})")
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, images: Iterable[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        images = list(images)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = np.stack(images[start:start + self.batch_size])
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
                x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
                x = ((x - self._mean) / self._std).to(self.device)
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURES), np.float32)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]`` (N, M >= 2), exactly as
    :func:`frechet_distance` of their :func:`statistics`.

    With fewer samples than dimensions (the usual case for a small grid and 2048-d features) the trace of the
    covariances' square-root product is computed in the samples' span instead of with a ``D x D`` matrix square
    root: with centred features ``A [N, D]`` and ``B [M, D]``, ``S1 = A^T A / (N-1)`` and ``S2 = B^T B / (M-1)``,
    the nonzero eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T / sqrt((N-1)(M-1))``, so
    ``tr (S1 S2)^(1/2)`` is the sum of those singular values (no regularisation needed).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of one width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*statistics(a), *statistics(b))
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    scale_a, scale_b = len(a) - 1, len(b) - 1
    trace_root = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(scale_a * scale_b)
    diff = mu_a - mu_b
    return float(diff @ diff + (ca**2).sum() / scale_a + (cb**2).sum() / scale_b - 2.0 * trace_root)
