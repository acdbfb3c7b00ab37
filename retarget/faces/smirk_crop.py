"""The SMIRK input crop (224x224), from MediaPipe landmarks when available, else from the five keypoints.

**Published crop** (SMIRK's demo, reused by Arc2Face): take the axis-aligned bounding box of MediaPipe
FaceLandmarker's 478 landmarks, ``old_size = (width + height) / 2``, ``size = int(1.4 * old_size)``, and map the
square of side ``size`` centred on the box onto the 224x224 crop with the similarity that sends its corners to
pixels 0 and 223 (scale ``223 / size``), bilinear, black outside the frame. :func:`landmark_crop_transform`
reproduces exactly that.

**Keypoint crop** (:func:`keypoint_crop_transform`, used when MediaPipe or ``face_landmarker.task`` is absent):
MediaPipe's landmarks are a deformation of its canonical face model. We fit the least-squares similarity from
that model's five matching points (eye-contour centres, nose tip, mouth corners, frontal projection) to the
detector's keypoints, map the outline of the model's frontal projection (:data:`CANONICAL_FACE_OUTLINE`) into the
frame with it, and apply the published recipe to that outline's bounding box, after two corrections measured
against MediaPipe on real faces (``python -m eval.smirk_crop_fit``; 137 faces from 4 real clips and 4 photos,
detector keypoints from the bundled MTCNN, mediapipe 1.2.3 with the published ``face_landmarker.task``):

* the outline is shrunk about its centre by :data:`KEYPOINT_CROP_SCALE` (the uncorrected box was 6 to 21 % larger
  than MediaPipe's: the 2-D outline of the whole canonical model spans more than the landmarks of a real face);
* it is shifted sideways by :data:`KEYPOINT_CROP_YAW_SHIFT` times the nose's sideways offset from the canonical
  nose in model units (a turned head moves the nose off the eyes-mouth midline one way and MediaPipe's box the
  other way; correlation -0.97 over those faces).

Left-one-source-out (each clip or photo scored with the corrections fitted on the others), the crop's side is
within 3.4 to 5.4 % of MediaPipe's on average per source (one long face: +12 %; before: 6 to 21 % too large) and
its centre within 1.3 to 3.0 % of the crop side on average (before: up to 10 % on turned heads). The remaining difference follows the person's face
shape and the head's pitch, which five points do not show; SMIRK is trained with crop jitter of this size.
The geometric data below is derived from MediaPipe's ``canonical_face_model.obj`` (Apache-2.0).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import weakref
from pathlib import Path

import cv2
import numpy as np

from ..errors import WeightsError
from .alignment import AlignTransform, estimate_similarity

__all__ = [
    "CANONICAL_FACE_KEYPOINTS",
    "CANONICAL_FACE_OUTLINE",
    "KEYPOINT_CROP_SCALE",
    "KEYPOINT_CROP_YAW_SHIFT",
    "MediaPipeLandmarker",
    "SMIRK_CROP_SCALE",
    "SMIRK_CROP_SIZE",
    "keypoint_crop_transform",
    "landmark_crop_transform",
]

logger = logging.getLogger(__name__)

SMIRK_CROP_SIZE = 224
SMIRK_CROP_SCALE = 1.4
LANDMARKER_FILENAME = "face_landmarker.task"

CANONICAL_FACE_KEYPOINTS = np.array(
    [[-3.18175, -2.63579], [3.18175, -2.63579], [0.0, 1.126865], [-2.456206, 4.342621], [2.456206, 4.342621]]
)
"""MediaPipe canonical face, frontal projection (x right, y down, model units): means of the eye-contour
landmarks (33, 160, 158, 133, 153, 144) and (362, 385, 387, 263, 373, 380), nose tip (1), mouth corners (61, 291),
in insightface keypoint order."""

_HALF_OUTLINE = np.array(
    [
        [7.743, -2.365], [7.556, -4.107], [7.088, -5.435], [6.279, -6.615], [5.133, -7.486], [3.524, -8.006],
        [1.891, -8.236], [0.0, -8.262], [0.0, 9.403], [1.293, 9.296], [2.309, 8.974], [3.211, 8.533],
        [4.069, 7.993], [5.085, 7.179], [5.941, 6.224], [6.72, 4.789], [7.271, 2.891], [7.542, 1.049],
        [7.664, -0.673],
    ]
)
CANONICAL_FACE_OUTLINE = np.concatenate([_HALF_OUTLINE, _HALF_OUTLINE * np.array([-1.0, 1.0])])
"""Convex outline of the MediaPipe canonical face's 468 vertices, frontal projection, [38, 2] model units (the
model is left-right symmetric; its bounding box is x in [-7.743, 7.743], y in [-8.262, 9.403])."""


KEYPOINT_CROP_SCALE = 0.91
"""Factor by which the canonical outline is shrunk about its bounding-box centre for the keypoint crop (measured,
see the module notes)."""

KEYPOINT_CROP_YAW_SHIFT = -1.84
"""Sideways shift of the canonical outline, in model units per model unit of the nose's sideways offset from the
canonical nose tip (measured, see the module notes)."""

_OUTLINE_CENTRE = (CANONICAL_FACE_OUTLINE.min(axis=0) + CANONICAL_FACE_OUTLINE.max(axis=0)) / 2.0


def _published_crop(left: float, top: float, right: float, bottom: float, image_size: int) -> AlignTransform:
    old_size = (right - left + bottom - top) / 2.0
    center_x, center_y = right - (right - left) / 2.0, bottom - (bottom - top) / 2.0
    size = int(old_size * SMIRK_CROP_SCALE)
    if size <= 0:
        raise ValueError("the face is too small for a SMIRK crop")
    scale = (image_size - 1) / size
    matrix = np.array(
        [[scale, 0.0, -scale * (center_x - size / 2.0)], [0.0, scale, -scale * (center_y - size / 2.0)]]
    )
    return AlignTransform(matrix, image_size, cv2.BORDER_CONSTANT, antialias=False)


def landmark_crop_transform(landmarks: np.ndarray, image_size: int = SMIRK_CROP_SIZE) -> AlignTransform:
    """The published SMIRK crop from MediaPipe landmarks.

    Args:
        landmarks: [K, 2] (or [K, 3], z ignored) landmark positions in frame pixels, K = 478 for FaceLandmarker.
    """
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    return _published_crop(points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max(), image_size)


def keypoint_crop_transform(keypoints: np.ndarray, image_size: int = SMIRK_CROP_SIZE) -> AlignTransform:
    """The equivalent SMIRK crop from five detector keypoints (see the module notes for how it is built and how
    far it is from the published crop).

    Args:
        keypoints: float [5, 2] frame pixels, insightface order.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    to_frame = estimate_similarity(CANONICAL_FACE_KEYPOINTS, keypoints)
    linear, offset = to_frame[:, :2], to_frame[:, 2]
    nose_in_model = np.linalg.solve(linear, keypoints[2] - offset)
    shift = np.array([KEYPOINT_CROP_YAW_SHIFT * (nose_in_model[0] - CANONICAL_FACE_KEYPOINTS[2, 0]), 0.0])
    outline = _OUTLINE_CENTRE + KEYPOINT_CROP_SCALE * (CANONICAL_FACE_OUTLINE - _OUTLINE_CENTRE) + shift
    outline = outline @ linear.T + offset
    return _published_crop(outline[:, 0].min(), outline[:, 1].min(), outline[:, 0].max(), outline[:, 1].max(), image_size)


class MediaPipeLandmarker:
    """MediaPipe FaceLandmarker (478 landmarks) from ``smirk/face_landmarker.task``; optional.

    The ``mediapipe`` package is imported only when one is created. Settings follow the published use (detection
    and presence confidence 0.1); several faces are searched and the one nearest the tracked keypoints is used.

    MediaPipe's native log lines while the graph is built (TFLite delegate notices, written straight to the
    process's stderr) are discarded unless this module's logger is enabled for DEBUG (``retarget --debug``).

    Args:
        task_path: the ``face_landmarker.task`` file.
        num_faces: faces searched per image.

    Raises:
        WeightsError: ``mediapipe`` lacks the Tasks FaceLandmarker API or cannot read the file.
    """

    def __init__(self, task_path: str | os.PathLike, num_faces: int = 4) -> None:
        try:
            from mediapipe import Image, ImageFormat
            from mediapipe.tasks.python import BaseOptions, vision

            self._image_type, self._format = Image, ImageFormat.SRGB
            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(task_path)),
                num_faces=int(num_faces),
                min_face_detection_confidence=0.1,
                min_face_presence_confidence=0.1,
            )
            with _quiet_native_stderr(enabled=not logger.isEnabledFor(logging.DEBUG)):
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as error:  # an incompatible mediapipe or a broken .task file: one line, not a traceback
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WeightsError(f"cannot load the MediaPipe face landmarker {task_path} ({reason}); remove the file "
                               "to use the keypoint crop") from error
        self.task_path = task_path
        # Close while the interpreter is intact: mediapipe 1.2's own __del__ fails during interpreter shutdown.
        self._finalizer = weakref.finalize(self, self._landmarker.close)

    def close(self) -> None:
        """Release the native landmarker (also done when this object is collected or the process exits)."""
        self._finalizer()

    @staticmethod
    def available(models_dir: str | os.PathLike | None) -> bool:
        """True when ``<models_dir>/smirk/face_landmarker.task`` exists and ``mediapipe`` is installed."""
        if models_dir is None or not (Path(models_dir) / "smirk" / LANDMARKER_FILENAME).is_file():
            return False
        return importlib.util.find_spec("mediapipe") is not None

    def landmarks(self, image: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray | None:
        """478 landmarks [478, 2] in pixels of the face nearest ``keypoints`` (or the first face), or ``None``.

        Args:
            image: RGB uint8 [H, W, 3].
            keypoints: [5, 2] pixels of the face wanted; a detected face whose landmark box does not contain the
                keypoints' centre is not used.
        """
        height, width = image.shape[:2]
        result = self._landmarker.detect(self._image_type(image_format=self._format, data=np.ascontiguousarray(image)))
        candidates = [
            np.array([[point.x * width, point.y * height] for point in face], dtype=np.float64)
            for face in result.face_landmarks
        ]
        if not candidates:
            return None
        if keypoints is None:
            return candidates[0]
        center = np.asarray(keypoints, dtype=np.float64).mean(axis=0)
        inside = [
            points for points in candidates
            if points[:, 0].min() <= center[0] <= points[:, 0].max() and points[:, 1].min() <= center[1] <= points[:, 1].max()
        ]
        if not inside:
            return None
        return min(inside, key=lambda points: float(np.linalg.norm(points.mean(axis=0) - center)))


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool = True):
    """Send file descriptor 2 to the null device for the duration (native libraries log there directly, past
    Python's ``sys.stderr``); a no-op when ``enabled`` is False or stderr has no file descriptor."""
    try:
        saved = os.dup(2) if enabled else None
    except OSError:
        saved = None
    if saved is None:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
