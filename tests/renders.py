"""Comparing two renders of the same frames made by separate jobs or processes."""

from __future__ import annotations

import numpy as np


def assert_same_render(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` (uint8 frames of the same shape) are the same render up to a rare one-level rounding flip:
    the CPU's float results of the same math can differ in their last bits between two runs (the BLAS library's
    thread count, memory alignment), which flips the rounding of a few values. At most one grey level, in fewer than
    1% of the values; a wrong input (noise, expression, reference) moves far more."""
    assert a.shape == b.shape, (a.shape, b.shape)
    difference = np.abs(a.astype(int) - b.astype(int))
    assert difference.max() <= 1, difference.max()
    assert np.count_nonzero(difference) < 0.01 * difference.size, np.count_nonzero(difference)
