"""Encoding frames to a video file: exact rational rate, preserved timestamps, audio, atomic output.

Usage::

    with VideoWriter("out.mp4", info.frame_rate, audio=AudioSource("driving.mp4")) as writer:
        for chunk in reader.iter_chunks():
            writer.write(chunk.frames)            # constant rate: frame k at k / rate
    # or, for variable-rate input: writer = VideoWriter(..., time_base=info.time_base); writer.write(frames, pts)

The file appears at ``path`` only when :meth:`VideoWriter.close` completes (it is written to a hidden
``.NAME.partial-<random>.EXT`` beside it and renamed); on an exception inside the ``with`` block, or after
:meth:`VideoWriter.abort`, the partial file is deleted and ``path`` is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retarget.video.atomic import commit, discard, partial_path
from retarget.video.audio import AudioMuxer, AudioSource, audio_muxers
from retarget.video.colour import SDR_BT709, is_yuv, output_range, swscale_flags
from retarget.video.encoding import EncoderSettings, apple_codec_tag, encoded_size, fit_frame


class VideoWriter:
    """Encode RGB frames to ``path``.

    ``rate``: the frame rate as a Fraction (kept exact in the stream). ``time_base``: the unit of the ``pts``
    given to :meth:`write`; default ``1 / rate``, in which case ``pts`` may be omitted and frame k gets pts k.
    Output timestamps are shifted so the first frame written is at time 0. ``audio``: a source whose audio
    (or a time range of it) goes into the file, see :mod:`retarget.video.audio`. Frames must all have the same
    size; odd sizes are handled per ``settings.odd_size``. A YUV pixel format is converted to with the matrix of
    ``settings.colour`` (default BT.709), which the stream is tagged with, with its primaries, its transfer and the
    range (see :mod:`retarget.video.colour`), so players agree on the colours.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rate: Fraction | int,
        *,
        settings: EncoderSettings | None = None,
        time_base: Fraction | None = None,
        audio: AudioSource | None = None,
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.rate = Fraction(rate)
        if self.rate <= 0:
            raise ValueError(f"frame rate must be positive, got {rate}")
        self.settings = settings or EncoderSettings()
        self.time_base = Fraction(time_base) if time_base is not None else 1 / self.rate
        self.audio_source = audio
        self.metadata = dict(metadata or {})
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the input frames
        self._partial = partial_path(self.path)
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._convert: dict | None = None  # reformat arguments: RGB to the stream's YUV, or None for RGB formats
        self._audio: list[AudioMuxer] = []  # one per audio stream of the source
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self._closed = False

    def _open(self, width: int, height: int) -> None:
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{self.path.parent}: output folder does not exist")
        self.size = (width, height)
        enc_w, enc_h = encoded_size(width, height, self.settings)
        if enc_w < 1 or enc_h < 1:
            raise ValueError(f"frame size {width}x{height} is too small for {self.settings.pix_fmt}")
        self._container = av.open(str(self._partial), mode="w")
        self._container.metadata.update(self.metadata)
        stream = self._container.add_stream(self.settings.codec, rate=self.rate)
        stream.width, stream.height = enc_w, enc_h
        stream.pix_fmt = self.settings.pix_fmt
        stream.codec_context.time_base = self.time_base
        stream.time_base = self.time_base
        stream.thread_type = "AUTO"
        stream.options = self.settings.codec_options()
        tag = apple_codec_tag(self.settings.codec, self.path.suffix)
        if tag is not None:
            stream.codec_context.codec_tag = tag
        if is_yuv(self.settings.pix_fmt):
            colour, colour_range = self.settings.colour or SDR_BT709, output_range(self.settings.pix_fmt)
            context = stream.codec_context
            context.colorspace, context.color_primaries = colour.matrix, colour.primaries
            context.color_trc, context.color_range = colour.transfer, colour_range
            self._convert = {"format": self.settings.pix_fmt, "dst_colorspace": colour.matrix,
                             "dst_color_range": colour_range, "interpolation": swscale_flags()}
        self._stream = stream
        if self.audio_source is not None:
            self._audio = audio_muxers(self._container, self.audio_source)

    def write(self, frames: np.ndarray, pts: Sequence[int] | np.ndarray | None = None) -> None:
        """Encode uint8 RGB ``frames`` (``[H, W, 3]`` or ``[n, H, W, 3]``).

        ``pts``: one int per frame in ``time_base`` units, strictly increasing across calls; required when the
        writer was given a ``time_base`` other than ``1 / rate``.
        """
        if self._closed:
            raise ValueError("writer is closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [n, H, W, 3] RGB, got {frames.dtype} {frames.shape}")
        if pts is None:
            if self.time_base != 1 / self.rate:
                raise ValueError("pts are required when the writer has its own time_base")
            pts = np.arange(self.frames_written, self.frames_written + len(frames))
        pts = np.asarray(pts, dtype=np.int64).reshape(-1)
        if len(pts) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(pts)} pts")
        height, width = frames.shape[1:3]
        if self._container is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(f"frame size changed from {self.size[0]}x{self.size[1]} to {width}x{height}")
        enc_w, enc_h = self._stream.width, self._stream.height
        for frame, frame_pts in zip(frames, pts):
            frame_pts = int(frame_pts)
            if self._first_pts is None:
                self._first_pts = frame_pts
            if self._last_pts is not None and frame_pts <= self._last_pts:
                raise ValueError(f"pts must increase: {frame_pts} after {self._last_pts}")
            self._last_pts = frame_pts
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(fit_frame(frame, enc_w, enc_h)), format="rgb24")
            if self._convert is not None:  # explicitly, with the matrix the stream is tagged with
                picture = picture.reformat(**self._convert)
            picture.pts = frame_pts - self._first_pts
            picture.time_base = self.time_base
            for packet in self._stream.encode(picture):
                self._container.mux(packet)
            self.frames_written += 1
            for muxer in self._audio:
                muxer.write_until((frame_pts - self._first_pts) * self.time_base)

    def close(self) -> Path:
        """Flush the encoder, write the rest of the audio, finish the file and move it to ``path``."""
        if self._closed:
            return self.path
        try:
            if self._container is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            for muxer in self._audio:
                muxer.finish()
            self._container.close()
            self._container = None
            commit(self._partial, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the partial file; ``path`` is left as it was."""
        self._closed = True
        for muxer in self._audio:
            muxer.close()
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError, ValueError):
                pass
            self._container = None
        discard(self._partial)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
