"""Encoder settings and the frame-size rule for chroma-subsampled pixel formats.

H.264 in 4:2:0 (``yuv420p``, the default, the format every player decodes) needs even width and height.
A frame with an odd side is padded by one pixel on the right/bottom edge, repeating the last column/row
(``odd_size="pad"``, the default: no picture is lost, 641x359 becomes 642x360), or cropped by one pixel
(``odd_size="crop"``: 641x359 becomes 640x358).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np

#: Codecs that take ``crf``; of these, the ones that take ``preset``.
_CRF_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"}
_PRESET_CODECS = {"libx264", "libx264rgb", "libx265", "libsvtav1"}


@dataclass(frozen=True)
class EncoderSettings:
    """How to encode video.

    ``codec``: an FFmpeg encoder name (``libx264`` default). ``crf``: constant quality (0 = lossless for x264,
    18 = visually lossless default, 23 = x264's own default; ignored by codecs without CRF). ``preset``: x264/x265
    speed preset (``medium`` default). ``pix_fmt``: ``yuv420p`` default. ``odd_size``: ``"pad"`` or ``"crop"``
    (see module doc). ``options``: extra encoder options passed to FFmpeg as strings.
    """

    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str = "yuv420p"
    odd_size: Literal["pad", "crop"] = "pad"
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.odd_size not in ("pad", "crop"):
            raise ValueError(f"odd_size must be 'pad' or 'crop', not {self.odd_size!r}")
        if self.codec not in av.codecs_available:
            raise ValueError(f"unknown video codec {self.codec!r}")

    def codec_options(self) -> dict[str, str]:
        """Options for the FFmpeg encoder (strings)."""
        options: dict[str, str] = {}
        if self.crf is not None and self.codec in _CRF_CODECS:
            options["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                options["b"] = "0"
        if self.preset is not None and self.codec in _PRESET_CODECS:
            options["preset"] = self.preset
        options.update({str(k): str(v) for k, v in self.options.items()})
        return options

    def as_dict(self) -> dict:
        """JSON-ready form (for job keys)."""
        return {
            "codec": self.codec,
            "crf": self.crf,
            "preset": self.preset,
            "pix_fmt": self.pix_fmt,
            "odd_size": self.odd_size,
            "options": dict(sorted((str(k), str(v)) for k, v in self.options.items())),
        }


def size_alignment(pix_fmt: str) -> tuple[int, int]:
    """(horizontal, vertical) multiple that frame sizes must have for ``pix_fmt`` (2, 2 for ``yuv420p``)."""
    fmt = av.VideoFormat(pix_fmt)
    if fmt.is_rgb or len(fmt.components) < 3:
        return 1, 1
    return 8 // max(1, fmt.chroma_width(8)), 8 // max(1, fmt.chroma_height(8))


def encoded_size(width: int, height: int, settings: EncoderSettings) -> tuple[int, int]:
    """The (width, height) a ``width`` x ``height`` frame is encoded at under ``settings``."""
    align_x, align_y = size_alignment(settings.pix_fmt)

    def fit(value: int, align: int) -> int:
        if value % align == 0:
            return value
        return value + (align - value % align) if settings.odd_size == "pad" else value - value % align

    return fit(width, align_x), fit(height, align_y)


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frame`` (``[H, W, C]``) padded by edge repetition or cropped on the right/bottom to ``height`` x ``width``."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    frame = frame[: min(h, height), : min(w, width)]
    pad_h, pad_w = height - frame.shape[0], width - frame.shape[1]
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame
