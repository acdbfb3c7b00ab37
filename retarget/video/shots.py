"""Shot changes (cuts) in a stream of frames: where the picture changes at once instead of by motion.

The score of a frame is the content score of PySceneDetect's ``ContentDetector``: the mean absolute difference of
the hue, saturation and value channels (OpenCV's 8-bit HSV: hue 0-179, the others 0-255) between it and the frame
before, here on thumbnails ``width`` pixels wide (hue differences taken the short way round the colour circle).
A frame whose score reaches ``threshold`` (27, that detector's default) starts a new shot. Consecutive frames of
four real talking-head clips scored at most 16, the first frame of one after the last of another 47 to 70.

A tracker uses this to know when position says nothing about who a face is (see
:meth:`retarget.faces.tracking.FaceTracker.update`). A false cut costs little (that frame's identity is checked, and
no gap is bridged across it); a missed one leaves position to decide, as without cuts. A gradual transition (a
dissolve, a fade) is not a cut here.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Content score at which a frame starts a new shot (PySceneDetect's default for its content detector).
CUT_THRESHOLD = 27.0


def _thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    height, full_width = frame.shape[:2]
    size = (width, max(1, round(width * height / full_width)))
    stride = max(1, full_width // (4 * width))  # every stride-th pixel, then the area average: a tenth of the cost
    small = cv2.resize(np.ascontiguousarray(frame[::stride, ::stride]), size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.float32)


def content_score(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute HSV difference of two thumbnails (float32 ``[h, w, 3]`` in OpenCV's 8-bit HSV ranges)."""
    difference = np.abs(after - before)
    difference[..., 0] = np.minimum(difference[..., 0], 180.0 - difference[..., 0])
    return float(difference.mean())


class ShotChanges:
    """Streaming cut detector: call :meth:`is_cut` with every frame of a clip, in order.

    Args:
        threshold: content score (0-255 scale) at which a frame starts a new shot.
        width: thumbnail width in pixels (the height keeps the frame's aspect); small thumbnails ignore noise and
            fine motion.
    """

    def __init__(self, threshold: float = CUT_THRESHOLD, width: int = 64):
        self.threshold = float(threshold)
        self.width = int(width)
        self._previous: np.ndarray | None = None

    def score(self, frame: np.ndarray) -> float | None:
        """Content score of ``frame`` (uint8 RGB ``[H, W, 3]``) against the frame given before it; None for the
        first frame or when the picture size changed (then the stream restarts there)."""
        thumbnail = _thumbnail(frame, self.width)
        previous, self._previous = self._previous, thumbnail
        if previous is None or previous.shape != thumbnail.shape:
            return None
        return content_score(previous, thumbnail)

    def is_cut(self, frame: np.ndarray) -> bool:
        """Whether ``frame`` starts a new shot (False for the first frame)."""
        score = self.score(frame)
        return score is not None and score >= self.threshold


def shot_ranges(cuts: np.ndarray | None, count: int) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges of the shots of ``count`` frames, in order: a new one at every frame where
    ``cuts`` (bool ``[count]``, or None for no cut) is True (one range for the whole clip without cuts)."""
    starts = [0] + ([int(i) for i in np.flatnonzero(cuts) if i > 0] if cuts is not None else [])
    return list(zip(starts, starts[1:] + [count]))
