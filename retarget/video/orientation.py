"""How a video stream's decoded pixels are shown: display orientation (FFmpeg display matrix) and pixel aspect.

Phones store portrait video as landscape pixels plus a 3x3 display matrix that says how to turn them for display.
The rules below follow FFmpeg's own autorotation (``fftools``), so frames come out as ``ffplay``/``ffmpeg`` show them.

Anamorphic video (DV, HDV, some broadcast and camcorder formats) stores pixels that are not square: the sample
aspect ratio (SAR) says how wide one pixel is shown relative to its height, e.g. 1440x1080 at 4:3 is shown as
1920x1080 and 720x480 at 8:9 as 640x480. Its frames are resampled to square pixels (the width scaled by the SAR,
in the stored picture's axes, before any rotation), as a player shows them, so faces keep their proportions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: Operations on the two spatial axes of an ``[..., H, W, C]`` array.
_OPERATIONS = {
    "rotate_ccw": lambda a: np.rot90(a, 1, axes=(-3, -2)),
    "rotate_cw": lambda a: np.rot90(a, -1, axes=(-3, -2)),
    "transpose": lambda a: np.swapaxes(a, -3, -2),
    "antitranspose": lambda a: np.swapaxes(a[..., ::-1, ::-1, :], -3, -2),
    "hflip": lambda a: a[..., :, ::-1, :],
    "vflip": lambda a: a[..., ::-1, :, :],
}


@dataclass(frozen=True)
class Orientation:
    """How to turn decoded pixels for display.

    ``rotation`` is the display matrix's rotation in degrees counter-clockwise (FFmpeg's
    ``av_display_rotation_get``, the value PyAV reports as ``VideoFrame.rotation``), rounded to a multiple of 90.
    ``steps`` are the pixel operations, applied in order.
    """

    rotation: int = 0
    steps: tuple[str, ...] = ()

    @property
    def swaps_axes(self) -> bool:
        """True when display width/height are the coded height/width."""
        return sum(step in ("rotate_ccw", "rotate_cw", "transpose", "antitranspose") for step in self.steps) % 2 == 1

    def display_size(self, coded_width: int, coded_height: int) -> tuple[int, int]:
        """(width, height) after applying this orientation to a coded ``coded_width`` x ``coded_height`` picture."""
        return (coded_height, coded_width) if self.swaps_axes else (coded_width, coded_height)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Return ``pixels`` (``[..., H, W, C]``) turned for display, as a C-contiguous array."""
        for step in self.steps:
            pixels = _OPERATIONS[step](pixels)
        return np.ascontiguousarray(pixels)


IDENTITY = Orientation()


def orientation_from_display_matrix(matrix: np.ndarray | None) -> Orientation:
    """Orientation for FFmpeg's 9-integer display matrix (16.16 fixed point, row-major), or identity for ``None``.

    Angles that are not multiples of 90 degrees are rounded to the nearest multiple, with a warning.
    """
    if matrix is None:
        return IDENTITY
    m = [int(v) for v in np.asarray(matrix).reshape(-1)[:9]]
    scale_x = math.hypot(m[0], m[3])
    scale_y = math.hypot(m[1], m[4])
    if scale_x == 0 or scale_y == 0:
        return IDENTITY
    # av_display_rotation_get() is -atan2(...) (counter-clockwise); fftools' get_rotation() negates it again,
    # giving the clockwise angle to turn the picture by.
    theta = math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    rounded = (round(theta / 90) * 90) % 360
    if abs(theta - rounded) > 1.0 and abs(theta - rounded - 360) > 1.0:
        warnings.warn(f"display rotation of {theta:.1f} degrees rounded to {rounded}", stacklevel=2)
        steps = {0: (), 90: ("rotate_cw",), 180: ("rotate_cw", "rotate_cw"), 270: ("rotate_ccw",)}[rounded]
        return Orientation(rotation=_ccw_degrees(rounded), steps=steps)
    if rounded == 90:
        steps = ("transpose",) if m[3] > 0 else ("rotate_cw",)
    elif rounded == 180:
        steps = tuple(s for s, on in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if on)
    elif rounded == 270:
        steps = ("antitranspose",) if m[3] < 0 else ("rotate_ccw",)
    else:
        steps = ("vflip",) if m[4] < 0 else ()
    return Orientation(rotation=_ccw_degrees(rounded), steps=steps)


def _ccw_degrees(clockwise: int) -> int:
    """A clockwise angle in [0, 360) as a counter-clockwise angle in (-180, 180]."""
    ccw = (-clockwise) % 360
    return ccw - 360 if ccw > 180 else ccw


#: Pixel aspect ratios outside this range (a stretch of more than 4x either way) are taken as damaged metadata.
PIXEL_ASPECT_RANGE = (Fraction(1, 4), Fraction(4))


def pixel_aspect(stream) -> Fraction:
    """The sample aspect ratio (pixel width / pixel height) of a PyAV video stream, as FFmpeg guesses it: the
    container's value when set, else the codec's; 1 when neither is set or the value is implausible (a warning)."""
    for value in (getattr(stream, "sample_aspect_ratio", None),
                  getattr(stream.codec_context, "sample_aspect_ratio", None)):
        if value is not None and value.numerator > 0 and value.denominator > 0:
            aspect = Fraction(value.numerator, value.denominator)
            low, high = PIXEL_ASPECT_RANGE
            if not low <= aspect <= high:
                warnings.warn(f"pixel aspect ratio {aspect} ignored (taken as square pixels)", stacklevel=2)
                return Fraction(1)
            return aspect
    return Fraction(1)


def square_pixel_width(coded_width: int, aspect: Fraction) -> int:
    """Width in square pixels of a stored picture ``coded_width`` pixels wide whose pixels are ``aspect`` wide."""
    return max(1, round(coded_width * aspect))
