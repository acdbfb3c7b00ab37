"""SCRFD face detector (the published ``antelopev2/scrfd_10g_bnkps.onnx``) on onnxruntime.

The image is letterboxed into the model's input (default 640x640: resized keeping its aspect ratio into the
top-left corner, zero padding), normalised as ``(rgb - 127.5) / 128``, and the nine outputs are decoded:
scores, box distances and keypoint distances for strides 8, 16 and 32, two anchors per location, in that
output order (the layout of insightface's SCRFD exports).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..errors import WeightsError
from .detection import Detector, Face, non_maximum_suppression, sort_largest_first
from .onnx_session import open_onnx_session, pooled_session_threading

__all__ = ["ScrfdDetector", "decode_scrfd_level"]

_STRIDES = (8, 16, 32)
_ANCHORS_PER_LOCATION = 2


def decode_scrfd_level(
    scores: np.ndarray, box_distances: np.ndarray, keypoint_distances: np.ndarray, stride: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one feature level of SCRFD outputs into boxes and keypoints in input-tensor pixels.

    Args:
        scores: [L*A] or [L*A, 1] sigmoid scores, L = (height // stride) * (width // stride) locations in row-major
            order, A = 2 anchors per location (anchor index fastest).
        box_distances: [L*A, 4] distances (left, top, right, bottom) in units of ``stride``.
        keypoint_distances: [L*A, 10] keypoint offsets ``(dx, dy)`` x 5 in units of ``stride``.
        stride: 8, 16 or 32.
        height, width: the input tensor's size in pixels.

    Returns:
        ``(scores [M], boxes [M, 4], keypoints [M, 5, 2])`` for all M = L*A anchors, float32.
    """
    rows, cols = height // stride, width // stride
    ys, xs = np.mgrid[:rows, :cols]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centers = np.repeat(centers, _ANCHORS_PER_LOCATION, axis=0)
    box_distances = box_distances.reshape(-1, 4) * stride
    boxes = np.concatenate([centers - box_distances[:, :2], centers + box_distances[:, 2:]], axis=1)
    keypoints = centers[:, None, :] + keypoint_distances.reshape(-1, 5, 2) * stride
    return scores.reshape(-1).astype(np.float32), boxes.astype(np.float32), keypoints.astype(np.float32)


class ScrfdDetector(Detector):
    """SCRFD with five keypoints.

    Args:
        model_path: ``scrfd_10g_bnkps.onnx`` (or another SCRFD ``*_bnkps`` export with 9 outputs).
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        input_size: ``(width, height)`` of the letterboxed input when the model's input size is dynamic;
            a model with a fixed input size uses its own.
        score_threshold: minimum score in [0, 1] (insightface's default 0.5).
        nms_threshold: IoU above which overlapping boxes are merged (insightface's default 0.4).
        onnxruntime_threading: open the model with onnxruntime's default threads (one per physical core for each
            call, busy-waiting between calls) instead of one thread per call; for comparison only.

    Raises:
        WeightsError: the file is missing, unloadable, or not an SCRFD model with keypoints.
    """

    name = "scrfd"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | None = None,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        onnxruntime_threading: bool = False,
    ) -> None:
        self.model_path = model_path
        # detect_many runs several images at once (the published file has a fixed batch of 1); a model with a batch
        # axis gets one call for all images instead, with onnxruntime's threads (reopened below).
        self.session = open_onnx_session(model_path, "SCRFD face detector", device,
                                         **pooled_session_threading(onnxruntime_threading))
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 9:
            raise WeightsError(
                f"{model_path} is not an SCRFD detector with keypoints: expected 1 input and 9 outputs, "
                f"got {len(inputs)} and {len(outputs)}"
            )
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in outputs]
        shape = inputs[0].shape
        fixed = len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int)
        self.input_size = (int(shape[3]), int(shape[2])) if fixed else tuple(int(v) for v in input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        batch, rank = shape[0] if len(shape) else 1, len(outputs[0].shape or ())
        # insightface's exports fix the batch at 1 and drop it from the outputs ([L, 1]); batch only when the
        # input's batch axis is dynamic and the outputs keep it ([N, L, 1]).
        self.batched = not isinstance(batch, int) and rank == 3
        if self.batched and not onnxruntime_threading:
            self.session = open_onnx_session(model_path, "SCRFD face detector", device)

    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize into the input size keeping aspect; returns the NCHW float32 tensor and the scale used."""
        width, height = self.input_size
        scale = min(width / image.shape[1], height / image.shape[0])
        new_w = max(1, int(round(image.shape[1] * scale)))
        new_h = max(1, int(round(image.shape[0] * scale)))
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas[:new_h, :new_w] = (resized.astype(np.float32) - 127.5) / 128.0
        return canvas.transpose(2, 0, 1)[None], scale

    def detect(self, image: np.ndarray) -> list[Face]:
        """Detect faces in an RGB uint8 image [H, W, 3]; returns faces largest first (see :class:`Face`)."""
        tensor, scale = self._letterbox(image)
        outputs = self.session.run(self.output_names, {self.input_name: tensor})
        return self._decode([out[0] if out.ndim == 3 else out for out in outputs], tensor.shape[2:], scale)

    def detect_many(self, images) -> list[list[Face]]:
        """:meth:`detect` for each image; one onnxruntime call for all of them when the model's batch axis is
        dynamic (:attr:`batched`), else one call per image, several at once (the published file has a fixed batch
        of 1; see :meth:`Detector.detect_many`)."""
        if not self.batched or len(images) < 2:
            return super().detect_many(images)
        letterboxed = [self._letterbox(image) for image in images]
        tensor = np.concatenate([t for t, _ in letterboxed])
        outputs = self.session.run(self.output_names, {self.input_name: tensor})
        return [self._decode([out[i] for out in outputs], tensor.shape[2:], scale)
                for i, (_, scale) in enumerate(letterboxed)]

    def _decode(self, outputs: list[np.ndarray], size: tuple[int, int], scale: float) -> list[Face]:
        """Faces from one image's nine outputs (without the batch axis) of an input of ``size`` (height, width)
        letterboxed at ``scale``."""
        height, width = size
        all_scores, all_boxes, all_keypoints = [], [], []
        for level, stride in enumerate(_STRIDES):
            scores, boxes, keypoints = decode_scrfd_level(
                outputs[level], outputs[level + 3], outputs[level + 6], stride, height, width
            )
            keep = scores >= self.score_threshold
            all_scores.append(scores[keep])
            all_boxes.append(boxes[keep])
            all_keypoints.append(keypoints[keep])
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes) / scale
        keypoints = np.concatenate(all_keypoints) / scale
        keep = non_maximum_suppression(boxes, scores, self.nms_threshold)
        faces = [
            Face(bbox=boxes[i].astype(np.float32), keypoints=keypoints[i].astype(np.float32), score=float(scores[i]))
            for i in keep
        ]
        return sort_largest_first(faces)
