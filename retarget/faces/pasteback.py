"""Paste an aligned (generated) face back into its frame.

The face crop is warped back with the exact inverse of the transform that cut it out
(:class:`~retarget.faces.alignment.AlignTransform`), and blended with a feathered face mask. The mask is a fixed
shape in crop coordinates (:func:`face_mask`: the outline of MediaPipe's canonical face placed by the same FFHQ
recipe, eroded and blurred), so it moves only with the alignment and does not flicker from frame to frame when
the keypoints are smoothed. Only the face's footprint in the frame is warped and blended, so the cost depends
on the face size, not on the frame size. Optional colour matching shifts the pasted face's LAB mean and spread
inside the mask to the frame's.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .alignment import AlignTransform, ffhq_transform
from .smirk_crop import CANONICAL_FACE_KEYPOINTS, CANONICAL_FACE_OUTLINE

__all__ = ["face_mask", "match_color", "paste_back"]


@lru_cache(maxsize=8)
def _cached_face_mask(size: int, feather: float) -> np.ndarray:
    to_crop = ffhq_transform(CANONICAL_FACE_KEYPOINTS, size)
    outline = cv2.convexHull(np.round(to_crop.to_crop(CANONICAL_FACE_OUTLINE) * 16).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.float32)
    cv2.fillPoly(mask, [outline], 1.0, lineType=cv2.LINE_AA, shift=4)
    sigma = max(feather * size, 0.5)
    radius = int(np.ceil(2.0 * sigma))
    if radius > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    mask.setflags(write=False)
    return mask


def face_mask(size: int = 512, feather: float = 0.03) -> np.ndarray:
    """Feathered face mask for an FFHQ-aligned crop.

    Args:
        size: crop side in pixels.
        feather: width of the soft edge as a fraction of ``size`` (Gaussian sigma); the mask is eroded by two
            sigmas first, so it reaches 0 at the face outline (forehead top, cheeks, chin).

    Returns:
        Read-only float32 [size, size] in [0, 1], 1 inside the face (cached per arguments).
    """
    return _cached_face_mask(int(size), float(feather))


def match_color(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Shift ``source``'s colours so that their LAB mean and standard deviation inside ``weights`` equal ``target``'s.

    Args:
        source, target: RGB uint8 [H, W, 3] of the same shape (e.g. the warped face and the frame region under it).
        weights: float [H, W] in [0, 1]; pixels with weight > 0.5 are measured.

    Returns:
        RGB uint8 [H, W, 3].
    """
    selected = weights > 0.5
    if selected.sum() < 16:
        return source
    source_lab = cv2.cvtColor(source.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    target_lab = cv2.cvtColor(target.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    source_mean, source_std = source_lab[selected].mean(0), source_lab[selected].std(0)
    target_mean, target_std = target_lab[selected].mean(0), target_lab[selected].std(0)
    adjusted = (source_lab - source_mean) * (target_std / np.maximum(source_std, 1e-3)) + target_mean
    rgb = cv2.cvtColor(adjusted.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def paste_back(
    frame: np.ndarray,
    face: np.ndarray,
    transform: AlignTransform,
    mask: np.ndarray | None = None,
    color_match: bool = False,
    inplace: bool = False,
) -> np.ndarray:
    """Blend an aligned face crop back into the frame it was cut from.

    Args:
        frame: RGB uint8 [H, W, 3].
        face: RGB uint8 [S, S, 3], S = ``transform.size`` (e.g. the 512x512 generated face).
        transform: the frame-to-crop transform used to cut the original crop.
        mask: float [S, S] in [0, 1] in crop coordinates; default :func:`face_mask` for S.
        color_match: match the face's LAB colour statistics to the frame's inside the mask.
        inplace: write into ``frame`` instead of a copy.

    Returns:
        RGB uint8 [H, W, 3]: the frame with the face pasted (``frame`` itself when ``inplace``).
    """
    size = transform.size
    if face.shape[:2] != (size, size):
        raise ValueError(f"face crop is {face.shape[:2]}, but the transform is for {size}x{size}")
    if mask is None:
        mask = face_mask(size)
    result = frame if inplace else frame.copy()
    x0, y0, x1, y1 = transform.frame_box(frame.shape)
    if x1 <= x0 or y1 <= y0:
        return result
    to_frame = np.vstack([transform.inverse, [0.0, 0.0, 1.0]])
    source_face, source_mask = face, np.asarray(mask, dtype=np.float32)
    # When the crop is much denser than the frame (a small face), area-average it first, down to a crop still
    # at least twice as dense as the frame: bilinear sampling of that is close to lossless for an unchanged crop
    # and does not alias the generated detail.
    factor = int(np.floor(transform.scale / 2.0))
    if factor >= 2:
        reduced = (size // factor, size // factor)
        source_face = cv2.resize(face, reduced, interpolation=cv2.INTER_AREA)
        source_mask = cv2.resize(source_mask, reduced, interpolation=cv2.INTER_AREA)
        to_crop = np.array([[factor, 0.0, (factor - 1) / 2.0], [0.0, factor, (factor - 1) / 2.0], [0.0, 0.0, 1.0]])
        to_frame = to_frame @ to_crop
    to_region = (np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ to_frame)[:2]
    region_size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(source_face, to_region, region_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weights = cv2.warpAffine(source_mask, to_region, region_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    region = result[y0:y1, x0:x1]
    if color_match:
        warped = match_color(warped, region, weights)
    alpha = weights[:, :, None]
    blended = region.astype(np.float32) * (1.0 - alpha) + warped.astype(np.float32) * alpha
    result[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result
