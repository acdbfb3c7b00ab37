"""Side-by-side comparison frames: driving | result (| source), panels scaled to a common height."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` scaled (aspect kept, Lanczos) to ``height`` rows; width rounded, at least 1."""
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def side_by_side(panels: Sequence[np.ndarray], height: int | None = None) -> np.ndarray:
    """Panels (uint8 ``[H_i, W_i, 3]``) placed left to right at a common ``height`` (default: the tallest
    panel's); returns uint8 ``[height, sum of scaled widths, 3]``."""
    if not panels:
        raise ValueError("no panels to compose")
    for panel in panels:
        if panel.ndim != 3 or panel.shape[2] != 3 or panel.dtype != np.uint8:
            raise ValueError(f"panels must be uint8 [H, W, 3], got {panel.dtype} {panel.shape}")
    height = height or max(panel.shape[0] for panel in panels)
    return np.concatenate([resize_to_height(panel, height) for panel in panels], axis=1)


def side_by_side_chunk(
    driving: np.ndarray, result: np.ndarray, source: np.ndarray | None = None, height: int | None = None
) -> np.ndarray:
    """Frame-wise :func:`side_by_side` of ``[n, H, W, 3]`` batches (``source`` may be one ``[H, W, 3]`` image
    shown beside every frame); default height: the result's."""
    if len(driving) != len(result):
        raise ValueError(f"{len(driving)} driving frames but {len(result)} results")
    height = height or result.shape[1]
    frames = None
    for k in range(len(result)):
        panels = [driving[k], result[k]]
        if source is not None:
            panels.append(source if source.ndim == 3 else source[k])
        frame = side_by_side(panels, height)
        if frames is None:  # one array for the batch, filled frame by frame (no list of copies to stack)
            frames = np.empty((len(result), *frame.shape), np.uint8)
        frames[k] = frame
    return frames if frames is not None else np.zeros((0, height, 0, 3), np.uint8)
