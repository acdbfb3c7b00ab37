"""Colour encoding of a video stream: the YUV <-> RGB matrix, the primaries and the transfer function.

Decoding turns YUV into RGB with a matrix, and a player turns an output's YUV back with the matrix its tags name.
A file without tags leaves the choice to the player, and players differ: Chromium, for one, takes BT.601 for
pictures under 720 rows and BT.709 from 720 rows, so an HD clip encoded with BT.601 and left untagged plays with
shifted colours there. So:

* an input is decoded with the matrix of its tags; where they are missing, with the matrix a browser would take
  (BT.601 under 720 rows, BT.709 from 720), and its primaries and transfer are taken the same way
  (:func:`stream_colour`);
* every output is encoded with an explicit matrix and tagged with it, with limited range: ``edit`` (whose frames are
  the clip's own) with the clip's colour, so a player shows untouched pixels as it shows the clip, and ``run``
  (whose faces the model makes in sRGB-like RGB) with BT.709 (:data:`SDR_BT709`).

Both conversions ask swscale for exact arithmetic (:func:`swscale_flags`): its fast path reads 8-bit YUV about one
luma level dark (the mean of the exact BT.601 luma of the RGB it gave, minus the stored luma, was -1.05 on two
sample clips, -1.06 for a 10-bit clip and -0.79 for a full-range one), so every pixel that ``edit`` passes through
came out a level darker; with the flags those means are within 0.02 of zero, and a decode to RGB and the encode
back give the same luma but for a few pixels (mean absolute difference under 0.001 on both sample clips).

HDR input (PQ or HLG transfer) is handled in its own encoding, without tone mapping: the models see its non-linear
values as they are, and ``edit`` keeps its tags, so players tone-map the output as they do the clip. Frames pass
through 8-bit RGB, so a 10-bit clip comes out with 8 bits of precision whatever the output's pixel format.

The values are FFmpeg's (``AVColorSpace``, ``AVColorPrimaries``, ``AVColorTransferCharacteristic``), which PyAV
reads and writes as integers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import av
import numpy as np

#: AVColorSpace values (matrices) that swscale converts with their own coefficients.
_MATRICES = {1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc", 10: "bt2020c"}
_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020", 11: "smpte431",
              12: "smpte432"}
_TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear", 13: "iec61966-2-1",
              14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67"}
#: Transfer functions of HDR video: PQ (SMPTE ST 2084) and HLG (ARIB STD-B67).
HDR_TRANSFERS = (16, 18)
#: Limited ("TV", MPEG) range: AVColorRange 1.
LIMITED_RANGE = 1
#: swscale's SWS_ACCURATE_RND (round instead of truncating) and SWS_FULL_CHR_H_INT (interpolate chroma over the
#: full width instead of reusing each sample for two pixels).
_EXACT_SWSCALE = 0x40000 | 0x2000


def swscale_flags(interpolation: str = "BILINEAR") -> int:
    """The ``interpolation`` argument of PyAV's ``reformat``/``to_ndarray`` for a conversion between a clip's YUV
    and RGB: the scaling filter (used only where the size changes: anamorphic pixels) with exact arithmetic.
    PyAV hands an integer to swscale as its flags."""
    from av.video.reformatter import Interpolation

    return int(Interpolation[interpolation]) | _EXACT_SWSCALE
FULL_RANGE = 2


@dataclass(frozen=True)
class ColourTags:
    """A stream's colour encoding as FFmpeg numbers it: ``matrix`` (AVColorSpace, the YUV <-> RGB matrix),
    ``primaries`` (AVColorPrimaries) and ``transfer`` (AVColorTransferCharacteristic)."""

    matrix: int
    primaries: int
    transfer: int

    @property
    def hdr(self) -> bool:
        """Whether the transfer function is PQ or HLG."""
        return self.transfer in HDR_TRANSFERS

    def describe(self) -> str:
        """``matrix/primaries/transfer`` by FFmpeg's names, e.g. ``bt709/bt709/bt709``."""
        return "/".join(table.get(value, str(value)) for table, value in (
            (_MATRICES, self.matrix), (_PRIMARIES, self.primaries), (_TRANSFERS, self.transfer)))

    def as_dict(self) -> dict:
        return {"matrix": self.matrix, "primaries": self.primaries, "transfer": self.transfer}


SDR_BT709 = ColourTags(1, 1, 1)
SDR_BT601 = ColourTags(6, 6, 6)

#: Pictures with at least this many rows count as HD when their tags are missing (Chromium's rule).
HD_ROWS = 720


def untagged_colour(height: int) -> ColourTags:
    """What a browser assumes for an untagged picture ``height`` rows high (stored rows, before any rotation)."""
    return SDR_BT709 if height >= HD_ROWS else SDR_BT601


def stream_colour(frame: av.VideoFrame) -> ColourTags:
    """The colour of a decoded frame's stream: its tags, each missing one from :func:`untagged_colour`. The
    matrix is one this PyAV can convert with (:func:`converts_matrix`), else the untagged one."""
    guess = untagged_colour(frame.height)
    matrix = int(frame.colorspace)
    if not converts_matrix(matrix):
        matrix = guess.matrix
    primaries = int(frame.color_primaries)
    transfer = int(frame.color_trc)
    return ColourTags(
        matrix=matrix,
        primaries=primaries if primaries in _PRIMARIES else guess.primaries,
        transfer=transfer if transfer in _TRANSFERS else guess.transfer,
    )


@functools.lru_cache(maxsize=None)
def converts_matrix(matrix: int) -> bool:
    """Whether this PyAV's swscale converts with ``matrix``'s own coefficients (PyAV 17 takes BT.2020 as BT.601):
    a saturated colour must come out of the matrix differently than out of BT.601, or be BT.601 itself."""
    if matrix not in _MATRICES:
        return False
    if matrix in (5, 6):
        return True
    picture = av.VideoFrame.from_ndarray(np.full((16, 16, 3), (200, 80, 40), np.uint8), format="rgb24")
    try:
        own = picture.reformat(format="yuv444p", dst_colorspace=matrix).to_ndarray()
    except (ValueError, av.error.FFmpegError):
        return False
    return not np.array_equal(own, picture.reformat(format="yuv444p", dst_colorspace=5).to_ndarray())


def output_range(pix_fmt: str) -> int:
    """The range an output in ``pix_fmt`` is written in: full for the deprecated ``yuvj*`` formats, else limited."""
    return FULL_RANGE if pix_fmt.startswith("yuvj") else LIMITED_RANGE


def is_yuv(pix_fmt: str) -> bool:
    """Whether ``pix_fmt`` stores luma and chroma (so a matrix applies), not RGB or grey."""
    fmt = av.VideoFormat(pix_fmt)
    return not fmt.is_rgb and len(fmt.components) >= 3
