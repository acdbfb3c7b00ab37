"""Face alignment: similarity transforms from five keypoints to square crops, and back.

Two crops are used:

* **ArcFace crop** (112x112) for identity: the least-squares similarity that maps the five keypoints onto
  insightface's ArcFace template (:data:`ARCFACE_TEMPLATE_112`), exactly as ``insightface.utils.face_align``
  estimates it (the linear least-squares similarity equals Umeyama's estimate for 2-D similarities).
* **FFHQ crop** (``size`` x ``size``, 512 for the published model) for generation and the reference image.
  FFHQ's recipe (NVlabs ``ffhq-dataset``) uses 68 dlib landmarks but only through four points: the two eye
  centres (means of the six eye-contour landmarks 36-41 and 42-47) and the two outer mouth corners (48, 54).
  From those it builds an oriented square: ``eye_to_eye``, ``eye_to_mouth``, x axis =
  ``eye_to_eye - rot90(eye_to_mouth)`` normalised and scaled to ``max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)``,
  centre ``eye_avg + 0.1 eye_to_mouth``, side ``2 |x|``. Here the same formulas are applied to the detector's
  keypoints: its eye points (pupil centres) stand in for the eye-contour means and its mouth corners for
  landmarks 48/54; the nose keypoint is not used. On frontal faces the two agree to within a few pixels at 512;
  the recipe's padding step (reflect + blur) is approximated by reflecting the frame at its border, and its
  4096-pixel supersampling + Lanczos by an area-averaged pre-shrink when the face is larger than the crop.
  The pixel-centre convention of the recipe's PIL quad transform (``quad + 0.5``) is kept, so an output pixel
  ``(i, j)`` samples the frame at ``quad_origin + (i + 0.5, j + 0.5) * side / size``.

An :class:`AlignTransform` holds the 2x3 matrix from frame pixels to crop pixels and offers the exact inverse.
Coordinates are pixels with pixel centres at integers (x right, y down); images are RGB uint8 [H, W, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "AlignTransform",
    "arcface_transform",
    "estimate_similarity",
    "ffhq_quad",
    "ffhq_transform",
]

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""insightface's ArcFace keypoint template for 112x112 crops, [5, 2] pixels, insightface keypoint order."""


def _as_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected points of shape [N, 2], got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points contain NaN or infinity")
    return points


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping source to target.

    Args:
        source, target: [N, 2] corresponding points, N >= 2.

    Returns:
        float64 [2, 3] matrix ``M`` with ``target ~ M @ [x, y, 1]``.
    """
    source, target = _as_points(source), _as_points(target)
    count = len(source)
    design = np.zeros((2 * count, 4))
    design[0::2] = np.stack([source[:, 0], -source[:, 1], np.ones(count), np.zeros(count)], axis=1)
    design[1::2] = np.stack([source[:, 1], source[:, 0], np.zeros(count), np.ones(count)], axis=1)
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, target.reshape(-1), rcond=None)
    if np.hypot(a, b) < 1e-12:
        raise ValueError("degenerate points: cannot estimate a similarity transform (all points coincide)")
    return np.array([[a, -b, tx], [b, a, ty]])


def _invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


@dataclass(frozen=True)
class AlignTransform:
    """A similarity transform from frame pixels to a ``size`` x ``size`` crop.

    Attributes:
        matrix: float64 [2, 3], crop = matrix @ [x, y, 1] for a frame point (x, y).
        size: crop side in pixels.
        border: OpenCV border mode used when the crop reaches outside the frame (``cv2.BORDER_REFLECT`` for
            FFHQ crops, ``cv2.BORDER_CONSTANT`` (black) for ArcFace and SMIRK crops, as published).
        antialias: area-average the frame before a warp that shrinks the face by 2x or more (FFHQ crops, whose
            recipe supersamples); off for ArcFace and SMIRK crops, which their references warp directly.
    """

    matrix: np.ndarray
    size: int
    border: int = cv2.BORDER_CONSTANT
    antialias: bool = False

    @property
    def inverse(self) -> np.ndarray:
        """float64 [2, 3] matrix from crop pixels back to frame pixels (exact inverse of :attr:`matrix`)."""
        return _invert_affine(self.matrix)

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel (> 1 when the crop enlarges the face)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map frame points [..., 2] to crop pixels (float64)."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Map crop points [..., 2] back to frame pixels (float64)."""
        inverse = self.inverse
        points = np.asarray(points, dtype=np.float64)
        return points @ inverse[:, :2].T + inverse[:, 2]

    def frame_box(self, frame_shape: tuple[int, ...], margin: int = 2) -> tuple[int, int, int, int]:
        """Integer box ``(x0, y0, x1, y1)`` (exclusive end) of the crop's footprint in the frame, clipped."""
        corners = self.to_frame(np.array([[-1, -1], [self.size, -1], [self.size, self.size], [-1, self.size]], float))
        height, width = frame_shape[:2]
        x0 = int(np.clip(np.floor(corners[:, 0].min()) - margin, 0, width))
        y0 = int(np.clip(np.floor(corners[:, 1].min()) - margin, 0, height))
        x1 = int(np.clip(np.ceil(corners[:, 0].max()) + margin + 1, 0, width))
        y1 = int(np.clip(np.ceil(corners[:, 1].max()) + margin + 1, 0, height))
        return x0, y0, x1, y1

    def warp(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR, dtype=None) -> np.ndarray:
        """Cut the aligned crop out of a frame.

        Only the region the crop covers is read. With :attr:`antialias`, when the crop shrinks the face by 2x or
        more that region is first area-averaged by an integer factor; the geometry is unchanged.

        Args:
            image: RGB uint8 [H, W, 3] (any [H, W, C] array works).
            interpolation: OpenCV interpolation flag.
            dtype: convert the read region to this dtype before warping (e.g. ``np.float32`` to avoid rounding);
                ``None`` keeps the image's dtype.

        Returns:
            The crop, [size, size, C], dtype ``dtype`` or the image's.
        """
        x0, y0, x1, y1 = self.frame_box(image.shape, margin=4)
        if x1 - x0 < 2 or y1 - y0 < 2:
            x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
        region = image[y0:y1, x0:x1]
        if dtype is not None:
            region = region.astype(dtype)
        # crop = M @ frame, frame = region + (x0, y0)
        matrix = self.matrix.copy()
        matrix[:, 2] += self.matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
        factor = int(np.floor(1.0 / max(self.scale, 1e-9))) if self.antialias else 1
        if factor >= 2 and min(region.shape[:2]) >= 2 * factor:
            small = cv2.resize(
                region,
                (region.shape[1] // factor, region.shape[0] // factor),
                interpolation=cv2.INTER_AREA,
            )
            # Pixel q of the shrunk region averages region pixels [q*f, q*f+f): its centre is q*f + (f-1)/2.
            to_region = np.array([[factor, 0.0, (factor - 1) / 2.0], [0.0, factor, (factor - 1) / 2.0], [0, 0, 1.0]])
            matrix = (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ to_region)[:2]
            region = small
        return cv2.warpAffine(
            region, matrix, (self.size, self.size), flags=interpolation, borderMode=self.border, borderValue=0
        )


def arcface_transform(keypoints: np.ndarray, size: int = 112) -> AlignTransform:
    """Transform to the ArcFace crop (insightface ``norm_crop``) of side ``size`` (a multiple of 112).

    Args:
        keypoints: float [5, 2] frame pixels, insightface order.
    """
    if size % 112:
        raise ValueError(f"ArcFace crop size must be a multiple of 112, got {size}")
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    return AlignTransform(estimate_similarity(keypoints, template), size, cv2.BORDER_CONSTANT)


def ffhq_quad(keypoints: np.ndarray) -> np.ndarray:
    """FFHQ's oriented crop square from five keypoints.

    Returns:
        float64 [4, 2] corners in frame pixels: top-left, bottom-left, bottom-right, top-right (the order of the
        FFHQ recipe's ``quad``).
    """
    points = _as_points(keypoints)
    if points.shape != (5, 2):
        raise ValueError(f"expected keypoints of shape [5, 2], got {points.shape}")
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def ffhq_transform(keypoints: np.ndarray, size: int = 512) -> AlignTransform:
    """Transform to the FFHQ-style crop of side ``size`` (512 for the published model).

    Args:
        keypoints: float [5, 2] frame pixels, insightface order.
    """
    quad = ffhq_quad(keypoints)
    origin = quad[0]
    axis_x = quad[3] - quad[0]
    axis_y = quad[1] - quad[0]
    if np.hypot(*axis_x) < 1e-6:
        raise ValueError("degenerate keypoints: the eyes and mouth coincide")
    # Output pixel (i, j) samples frame point origin + ((i + 0.5) axis_x + (j + 0.5) axis_y) / size.
    linear = np.stack([axis_x, axis_y], axis=1) / size
    inverse = np.concatenate([linear, (origin + linear @ np.array([0.5, 0.5]))[:, None]], axis=1)
    return AlignTransform(_invert_affine(inverse), int(size), cv2.BORDER_REFLECT, antialias=True)
