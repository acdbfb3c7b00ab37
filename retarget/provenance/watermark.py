"""Invisible watermark in video frames: DWT-DCT with quantisation-index modulation, robust to x264.

The scheme (all in luma, so colours are untouched):

1. ``Y`` = OpenCV's luma of the RGB frame (``0.299 R + 0.587 G + 0.114 B``), cropped to whole blocks.
2. One level of the Haar DWT; its LL band (``(a + b + c + d) / 2`` over 2x2 pixels) is cut into
   :data:`BLOCK` x :data:`BLOCK` blocks (16x16 pixels each).
3. The orthonormal 2-D DCT of each block; its two lowest AC coefficients, (0, 1) and (1, 0), each carry one payload
   bit: block ``n`` (row-major) carries bit ``n % 48`` in both.
4. Quantisation-index modulation with step :data:`STEP`: a 0 moves the coefficient to the nearest multiple of
   ``STEP``, a 1 to the nearest odd multiple of ``STEP / 2``. The change goes back through the inverse DCT and the
   inverse Haar step (detail bands kept, so an LL change ``d`` is ``d / 2`` on each of its 2x2 pixels) and is
   added to R, G and B alike (which changes Y only). The largest change is about 3 grey levels, typical PSNR
   47-50 dB.

Reading: each carrying coefficient gives the soft score ``(1 - cos(2 pi c / STEP)) / 2`` (0 on the 0-lattice,
1 on the 1-lattice); a bit's score is the mean over its coefficients. Low DCT frequencies of 16x16 areas are what
H.264 keeps best, so the mark survives x264 at CRF 18 and 23 (every bit of a 512x512 clip; see the tests).
This is the DWT-DCT family of the ``invisible-watermark`` package used by diffusers' SDXL pipelines, but not its
``dwtDct`` method: that one marks the largest coefficient of each LL block of the U chroma channel with no DCT and
reads back about 50% of its bits (chance) from x264 P-frames at CRF 18, and its per-block Python loop costs about
80 ms per 512x512 frame.

Detection over a clip (:func:`detect`): the per-bit scores are averaged over the frames read, each bit is decided by
its mean (> 0.5 means 1), and the clip carries the mark when at least :data:`MATCH_THRESHOLD` of the 48 decided bits
equal :data:`PAYLOAD`. Frames of one clip are strongly correlated, so the false-positive bound counts the clip as
one draw of 48 bits, not as many frames. For unmarked content each decided bit is a fair coin (a textured block's
coefficient modulo ``STEP`` is spread evenly), flat areas give 0s (coefficient 0), and the payload has 24 ones and
24 zeros, so a constant answer agrees on 24. ``P(>= 42 of 48 agree) = sum_{k>=42} C(48, k) / 2**48 = 5.0e-8``
(:func:`false_positive_rate`).

Capacity: a frame of H x W pixels has ``(H // 16) * (W // 16)`` blocks, two carrying coefficients each; a frame with
fewer than 48 carrying coefficients (fewer than 24 blocks, e.g. 64x64) is left unmarked and cannot be read
(:func:`can_carry`).
Small frames repeat each bit only a few times, so their marks are weaker under strong compression.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

#: 48-bit tag meaning "synthetic video made by retarget": the ASCII bytes ``RTsyn`` and 0x2A (24 ones, 24 zeros).
PAYLOAD_BYTES = b"RTsyn\x2a"
PAYLOAD = np.unpackbits(np.frombuffer(PAYLOAD_BYTES, np.uint8))
#: Side of an LL-band block (a block covers 2 * BLOCK pixels on each side).
BLOCK = 8
#: Quantisation step of the carrying DCT coefficients (orthonormal DCT of LL values).
STEP = 36.0
#: Decided bits (of 48) that must equal PAYLOAD for a clip to count as marked.
MATCH_THRESHOLD = 42
#: The DCT coefficients (row frequency, column frequency) that carry the bits.
COEFFICIENTS = ((0, 1), (1, 0))


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``[frequency, sample]``."""
    k = np.arange(n)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(BLOCK)
#: The carrying basis images, flattened: ``[len(COEFFICIENTS), BLOCK * BLOCK]`` (coefficient = block . basis).
_BASES = np.stack([np.outer(_DCT[u], _DCT[v]).ravel() for u, v in COEFFICIENTS]).astype(np.float32)


def _grid(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of blocks in a frame."""
    return height // (2 * BLOCK), width // (2 * BLOCK)


def capacity(height: int, width: int) -> int:
    """Number of carrying coefficients in a ``height`` x ``width`` frame (each carries one payload bit)."""
    rows, cols = _grid(height, width)
    return rows * cols * len(COEFFICIENTS)


def can_carry(height: int, width: int, bits: int = len(PAYLOAD)) -> bool:
    """True when a frame of this size carries every payload bit at least once."""
    return capacity(height, width) >= bits


def false_positive_rate(threshold: int = MATCH_THRESHOLD, bits: int = len(PAYLOAD)) -> float:
    """Probability that ``bits`` fair coins agree with the payload in at least ``threshold`` places."""
    return sum(math.comb(bits, k) for k in range(threshold, bits + 1)) / 2.0**bits


def _coefficients(frame: np.ndarray) -> np.ndarray:
    """The carrying DCT coefficients of the frame's luma LL blocks: float32 ``[rows, cols, len(COEFFICIENTS)]``."""
    rows, cols = _grid(*frame.shape[:2])
    side = 2 * BLOCK
    luma = cv2.cvtColor(np.ascontiguousarray(frame[: rows * side, : cols * side]), cv2.COLOR_RGB2GRAY)
    ll = cv2.resize(luma.astype(np.float32), (cols * BLOCK, rows * BLOCK), interpolation=cv2.INTER_AREA) * 2.0
    blocks = ll.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3).reshape(rows, cols, BLOCK * BLOCK)
    return blocks @ _BASES.T


def _bit_index(rows: int, cols: int, bits: int) -> np.ndarray:
    """Payload bit of each carrying coefficient: ``[rows, cols, len(COEFFICIENTS)]``."""
    block = np.arange(rows * cols).reshape(rows, cols, 1) % bits
    return np.broadcast_to(block, (rows, cols, len(COEFFICIENTS)))


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}")
    return frame


def embed(frame: np.ndarray, payload: np.ndarray = PAYLOAD) -> np.ndarray:
    """``frame`` (uint8 RGB ``[H, W, 3]``) with the watermark, as a new array. A frame too small to carry every
    payload bit (:func:`can_carry`) comes back unchanged (copied)."""
    frame = _check_frame(frame)
    payload = np.asarray(payload, np.uint8)
    height, width = frame.shape[:2]
    out = frame.copy()
    if not can_carry(height, width, len(payload)):
        return out
    rows, cols = _grid(height, width)
    coefficients = _coefficients(frame)
    offset = payload[_bit_index(rows, cols, len(payload))].astype(np.float32) * (0.5 * STEP)
    target = np.round((coefficients - offset) / STEP) * STEP + offset
    # Inverse DCT of the coefficient changes, then inverse Haar with the detail bands kept: d / 2 per pixel.
    ll_change = ((target - coefficients) @ _BASES).reshape(rows, cols, BLOCK, BLOCK).transpose(0, 2, 1, 3)
    pixel_change = np.rint(ll_change.reshape(rows * BLOCK, cols * BLOCK) * 0.5).astype(np.int16)
    side = 2 * BLOCK

    def spread(part: np.ndarray) -> np.ndarray:  # uint8 [rows * side, cols * side, 3] from the LL grid
        part = cv2.resize(part.astype(np.uint8), (cols * side, rows * side), interpolation=cv2.INTER_NEAREST)
        return cv2.cvtColor(part, cv2.COLOR_GRAY2RGB)

    up, down = spread(np.maximum(pixel_change, 0)), spread(np.maximum(-pixel_change, 0))
    region = out[: rows * side, : cols * side]
    region[...] = cv2.subtract(cv2.add(region, up), down)  # saturating uint8 arithmetic
    return out


def embed_frames(frames: np.ndarray, payload: np.ndarray = PAYLOAD) -> np.ndarray:
    """:func:`embed` for each frame of uint8 RGB ``[n, H, W, 3]``; a new array."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected uint8 [n, H, W, 3] frames, got {frames.shape}")
    out = np.empty_like(frames)
    for index, frame in enumerate(frames):
        out[index] = embed(frame, payload)
    return out


def bit_scores(frame: np.ndarray, bits: int = len(PAYLOAD)) -> np.ndarray | None:
    """Soft per-bit scores of one uint8 RGB frame: float ``[bits]`` in [0, 1] (> 0.5 reads as 1); ``None`` when the
    frame is too small to carry every bit."""
    frame = _check_frame(frame)
    height, width = frame.shape[:2]
    if not can_carry(height, width, bits):
        return None
    rows, cols = _grid(height, width)
    soft = (1.0 - np.cos(2.0 * np.pi * _coefficients(frame).astype(np.float64) / STEP)) * 0.5
    which = _bit_index(rows, cols, bits).ravel()
    return np.bincount(which, weights=soft.ravel(), minlength=bits) / np.bincount(which, minlength=bits)


def bit_accuracy(scores: np.ndarray, payload: np.ndarray = PAYLOAD) -> float:
    """Fraction of bits whose decision (score > 0.5 means 1) equals ``payload``."""
    return float(np.mean((np.asarray(scores) > 0.5) == (np.asarray(payload) == 1)))


def detect(frames: Iterable[np.ndarray], payload: np.ndarray = PAYLOAD, threshold: int = MATCH_THRESHOLD) -> dict:
    """Look for the mark in ``frames`` (an iterable of uint8 RGB ``[H, W, 3]``).

    Returns ``{"found": bool, "frames": int (frames read), "bit_accuracy": float | None (bits decided from the mean
    scores over the frames that equal the payload), "matching_bits": int | None, "bits": int, "threshold": int,
    "frame_accuracy": {"mean", "min", "max"} | None (per-frame bit accuracies), "reason": str | None (why nothing
    could be read)}``.
    """
    payload = np.asarray(payload, np.uint8)
    total = np.zeros(len(payload))
    per_frame: list[float] = []
    too_small = None
    for frame in frames:
        scores = bit_scores(frame, len(payload))
        if scores is None:
            too_small = frame.shape[:2]
            continue
        total += scores
        per_frame.append(bit_accuracy(scores, payload))
    result = {"found": False, "frames": len(per_frame), "bit_accuracy": None, "matching_bits": None,
              "bits": len(payload), "threshold": threshold, "frame_accuracy": None, "reason": None}
    if not per_frame:
        result["reason"] = (f"frames of {too_small[1]}x{too_small[0]} are too small to carry the mark"
                            if too_small is not None else "no frames")
        return result
    matching = int(np.sum((total / len(per_frame) > 0.5) == (payload == 1)))
    result.update(found=matching >= threshold, bit_accuracy=matching / len(payload), matching_bits=matching,
                  frame_accuracy={"mean": float(np.mean(per_frame)), "min": float(np.min(per_frame)),
                                  "max": float(np.max(per_frame))})
    return result
