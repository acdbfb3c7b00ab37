"""Encoder settings and the frame-size rule for chroma-subsampled pixel formats.

H.264 in 4:2:0 (``yuv420p``, the default, the format every player decodes) needs even width and height.
A frame with an odd side is padded by one pixel on the right/bottom edge, repeating the last column/row
(``odd_size="pad"``, the default: no picture is lost, 641x359 becomes 642x360), or cropped by one pixel
(``odd_size="crop"``: 641x359 becomes 640x358).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np

from retarget.video.colour import ColourTags

#: Codecs that take ``crf``, with its largest value (0 is the smallest); of these, the ones that take ``preset``.
_CRF_CODECS = {"libx264": 51, "libx264rgb": 51, "libx265": 51, "libvpx-vp9": 63, "libaom-av1": 63, "libsvtav1": 63}
_PRESET_CODECS = {"libx264", "libx264rgb", "libx265", "libsvtav1"}


@dataclass(frozen=True)
class EncoderSettings:
    """How to encode video.

    ``codec``: an FFmpeg encoder name (``libx264`` default). ``crf``: constant quality (0 = lossless for x264,
    18 = visually lossless default, 23 = x264's own default; ignored by codecs without CRF). ``preset``: x264/x265
    speed preset (``medium`` default). ``pix_fmt``: ``yuv420p`` default. ``odd_size``: ``"pad"`` or ``"crop"``
    (see module doc). ``options``: extra encoder options passed to FFmpeg as strings. ``colour``: the matrix the
    frames are encoded with and the tags written (default, None: BT.709; see :mod:`retarget.video.colour`); the
    jobs set it from their input.
    """

    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str = "yuv420p"
    odd_size: Literal["pad", "crop"] = "pad"
    options: Mapping[str, str] = field(default_factory=dict)
    colour: ColourTags | None = None

    def __post_init__(self):
        """Checks the settings at once, opening the encoder on a small picture, so that settings it refuses fail
        here with one line (``ValueError``) rather than at the first chunk's encoding."""
        if self.odd_size not in ("pad", "crop"):
            raise ValueError(f"odd_size must be 'pad' or 'crop', not {self.odd_size!r}")
        if self.codec not in av.codecs_available:
            raise ValueError(f"unknown video codec {self.codec!r}")
        if self.crf is not None and self.codec in _CRF_CODECS and not 0 <= self.crf <= _CRF_CODECS[self.codec]:
            raise ValueError(f"crf must be from 0 to {_CRF_CODECS[self.codec]} for {self.codec}, got {self.crf}")
        _open_encoder(self.codec, self.pix_fmt, tuple(sorted(self.codec_options().items())))

    def codec_options(self) -> dict[str, str]:
        """Options for the FFmpeg encoder (strings)."""
        options: dict[str, str] = {}
        if self.crf is not None and self.codec in _CRF_CODECS:
            options["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                options["b"] = "0"
        if self.preset is not None and self.codec in _PRESET_CODECS:
            options["preset"] = self.preset
        if self.codec == "libx265":  # x265 writes a dozen info lines per encoder opened (one per chunk)
            options["x265-params"] = "log-level=error"
        options.update({str(k): str(v) for k, v in self.options.items()})
        return options

    def as_dict(self) -> dict:
        """JSON-ready form (for job keys); ``colour`` only when set, so the keys of settings without it stay those
        of earlier versions."""
        data = {
            "codec": self.codec,
            "crf": self.crf,
            "preset": self.preset,
            "pix_fmt": self.pix_fmt,
            "odd_size": self.odd_size,
            "options": dict(sorted((str(k), str(v)) for k, v in self.options.items())),
        }
        if self.colour is not None:
            data["colour"] = self.colour.as_dict()
        return data


@functools.lru_cache(maxsize=64)
def _open_encoder(codec_name: str, pix_fmt: str, options: tuple[tuple[str, str], ...]) -> None:
    """Open the encoder ``codec_name`` with ``options`` on a 64x64 ``pix_fmt`` picture; ``ValueError`` naming what
    it refused. Once per process for each setting (the web app's and the writers' defaults are checked once)."""
    from fractions import Fraction

    try:
        codec = av.Codec(codec_name, "w")
    except Exception as error:  # a decoder-only name
        raise ValueError(f"{codec_name!r} is not a video encoder") from error
    if codec.type != "video":
        raise ValueError(f"{codec_name!r} is not a video encoder")
    try:
        av.VideoFormat(pix_fmt)
    except ValueError as error:
        raise ValueError(f"unknown pixel format {pix_fmt!r}") from error
    accepted = [f.name for f in codec.video_formats or ()]
    if accepted and pix_fmt not in accepted:
        raise ValueError(f"{codec_name} does not encode pixel format {pix_fmt!r} "
                         f"(it takes {', '.join(accepted)})")
    context = av.CodecContext.create(codec)
    context.width, context.height = 64, 64
    context.pix_fmt = pix_fmt
    context.time_base = Fraction(1, 25)
    context.options = dict(options)
    with _stderr_captured() as said:  # x264 prints why (e.g. "invalid preset") on the process's stderr
        try:
            context.open()
            failure = None
        except Exception as error:  # PyAV raises several types (ArgumentError, OverflowError, ...)
            failure = error
        del context  # freed here, inside the capture: x265 prints its statistics ("encoded 0 frames") on closing
    if failure is not None:
        why = said() or str(failure).strip().splitlines()[0]
        settings = ", ".join([f"{key} {value}" for key, value in options] + [f"pixel format {pix_fmt}"])
        raise ValueError(f"{codec_name} refused the encoder settings ({settings}): {why}") from failure


class _stderr_captured:
    """Redirect file descriptor 2 to a temporary file for a ``with`` block; calling the object it gives returns the
    last non-empty line written there, without the encoder's ``[error]:`` prefix (or "")."""

    def __enter__(self):
        import os
        import sys
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self._last_line

    def __exit__(self, *exc_info):
        import os

        os.dup2(self._saved, 2)
        os.close(self._saved)

    def _last_line(self) -> str:
        self._file.seek(0)
        lines = [line.strip() for line in self._file.read().decode(errors="replace").splitlines() if line.strip()]
        self._file.close()
        return lines[-1].split("]: ", 1)[-1] if lines else ""


def apple_codec_tag(codec_name: str, suffix: str) -> str | None:
    """The sample-entry tag to give a video stream of encoder (or codec) ``codec_name`` in a file ending in
    ``suffix`` so that Apple's players (QuickTime, Safari, iOS, Photos) play it: ``"hvc1"`` for HEVC in MP4/MOV
    (FFmpeg's default there is ``hev1``, which they refuse), None where the default is right."""
    if suffix.lower() not in (".mp4", ".mov", ".m4v"):
        return None
    return "hvc1" if _codec_id(codec_name) == _codec_id("hevc") else None


def _codec_id(name: str) -> int | None:
    """FFmpeg's codec id of an encoder or decoder name (``libx265`` and ``hevc`` share one), None if unknown."""
    for mode in ("w", "r"):
        try:
            return av.Codec(name, mode).id
        except Exception:  # PyAV raises its own UnknownCodecError (a ValueError) or FFmpegError by version
            continue
    return None


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
