"""Streaming decode: RGB frames in bounded chunks, with their timestamps, as a player shows them (the stream's
colour matrix, see :mod:`retarget.video.colour`; anamorphic pixels resampled to square ones; rotation applied).

Memory: one chunk of ``chunk_size`` frames (``chunk_size * H * W * 3`` bytes) plus the decoder's own few
reference frames, whatever the clip length. The decoder is flushed at the end of the stream so the last frames
(held back by B-frame reordering) are returned too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retarget.errors import InputError
from retarget.video.colour import swscale_flags
from retarget.video.orientation import square_pixel_width
from retarget.video.probe import VideoInfo, _reason, open_input, probe_video


#: How much earlier (seconds) a seek that landed after a range's first frame is tried again, before decoding from the
#: top: about one GOP of camcorder MPEG-TS, then longer GOPs (x264's default keyframe interval is 250 frames).
SEEK_RETRIES_S = (1.0, 5.0, 20.0)


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive decoded frames.

    ``frames``: uint8 ``[n, H, W, 3]`` RGB in display orientation and square pixels. ``pts``: int64 ``[n]``
    presentation timestamps in the stream's ``time_base``. ``times``: float64 ``[n]`` seconds since the clip's
    first frame. ``indices``: int64 ``[n]`` frame numbers in the whole clip (0 = first frame), also when reading a
    time range.
    """

    frames: np.ndarray
    pts: np.ndarray
    times: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])


class VideoReader:
    """Decode a video file frame by frame or chunk by chunk.

    ``VideoReader(path)`` probes the file (see :func:`probe_video`); ``reader.info`` holds the result.
    Decoding errors and truncation raise :class:`InputError` naming the file.
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None, threads: int = 0):
        self.path = Path(path)
        self.info = info if info is not None else probe_video(self.path)
        self.threads = threads

    def frame_range(self, start: float | None = None, end: float | None = None) -> tuple[int, int]:
        """Frame numbers ``[first, stop)`` whose times ``t`` satisfy ``start <= t < end`` (seconds from the first frame;
        ``None`` = open end). Times are compared exactly, in the stream's time base."""
        info = self.info
        lo, hi = 0, info.frame_count
        if start is not None:
            start_pts = info.start_pts + _ceil_ticks(start, info.time_base)
            lo = int(np.searchsorted(info.frame_pts, start_pts, side="left"))
        if end is not None:
            end_pts = info.start_pts + _ceil_ticks(end, info.time_base)
            hi = int(np.searchsorted(info.frame_pts, end_pts, side="left"))
        return lo, max(lo, hi)

    def count(self, start: float | None = None, end: float | None = None) -> int:
        """Number of frames :meth:`iter_frames` yields for this range."""
        lo, hi = self.frame_range(start, end)
        return hi - lo

    def iter_frames(
        self, start: float | None = None, end: float | None = None
    ) -> Iterator[tuple[np.ndarray, int, int]]:
        """Yield ``(rgb, pts, index)``: uint8 ``[H, W, 3]`` RGB as shown (square pixels, display orientation; ``H``
        and ``W`` are ``info.height``/``info.width``), the pts in ``info.time_base``, and the frame number in the
        whole clip, for the frames with ``start <= t < end``.

        A range that does not begin at the first frame starts with a seek, which is checked: where the demuxer
        lands after the range's first frame (MPEG-TS and MPEG-PS have no index and can land on a frame that is not a
        keyframe, from which the decoder shows nothing until the next keyframe), the seek is tried again
        :data:`SEEK_RETRIES_S` seconds earlier, and in the end the clip is decoded from its start.

        Interlaced clips (``info.interlaced``) are deinterlaced, one frame per frame (see :func:`deinterlaced`); a
        range then starts decoding one frame early, so that each frame is deinterlaced with the same neighbours as
        in a read of the whole clip.
        """
        info = self.info
        lo, hi = self.frame_range(start, end)
        if lo >= hi:
            return
        # The stream's matrix, with exact arithmetic (see retarget.video.colour); anamorphic pixels: swscale
        # resamples the width while it converts to RGB (one pass, Lanczos).
        convert = {"src_colorspace": info.colour.matrix, "interpolation": swscale_flags()}
        if info.pixel_aspect != 1:
            convert.update(width=square_pixel_width(info.coded_width, info.pixel_aspect), height=info.coded_height,
                           interpolation=swscale_flags("LANCZOS"))
        first_pts, last_pts = int(info.frame_pts[lo]), int(info.frame_pts[hi - 1])
        decode_from = max(0, lo - 1) if info.interlaced else lo  # the deinterlacer reads the frame before
        from_pts = int(info.frame_pts[decode_from])
        produced = 0
        for seek_pts in self._seek_targets(from_pts) if decode_from > 0 else [None]:
            container = open_input(self.path)
            try:
                stream = container.streams[info.stream_index]
                stream.thread_type = "AUTO"
                if self.threads:
                    stream.codec_context.thread_count = self.threads
                if seek_pts is not None:
                    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
                decoded = 0  # frames decoded in this pass: their numbers in the clip when it starts at the top
                frames = container.decode(stream)
                for frame in deinterlaced(frames, stream) if info.interlaced else frames:
                    if frame.pts is not None:
                        pts = frame.pts
                    elif seek_pts is None:
                        pts = int(info.frame_pts[min(decoded, len(info.frame_pts) - 1)])
                    else:
                        break  # no timestamp after a seek: the position is unknown, decode from the top instead
                    decoded += 1
                    if decoded == 1 and seek_pts is not None and pts > from_pts:
                        break  # landed after the range's first frame (or the one before, to deinterlace)
                    if pts < first_pts:
                        continue
                    if pts > last_pts:
                        break
                    index = lo + produced
                    rgb = frame.to_ndarray(format="rgb24", **convert)
                    rgb = info.orientation.apply(rgb)
                    produced += 1
                    yield rgb, int(pts), index
                    if produced == hi - lo:
                        break
            except av.error.FFmpegError as error:
                raise InputError(f"{self.path}: damaged video, decoding stopped at frame {lo + produced} "
                                 f"({_reason(error)})") from error
            finally:
                container.close()
            if produced > 0 or seek_pts is None:
                break  # a frame of the range came out (nothing is decoded twice), or this pass started at the top
        if produced < hi - lo:
            raise InputError(
                f"{self.path}: truncated or damaged video, decoded {produced} of {hi - lo} frames"
            )

    def _seek_targets(self, first_pts: int) -> list[int | None]:
        """Where to seek for a range starting at ``first_pts``, in order of trial: the frame itself, then
        :data:`SEEK_RETRIES_S` seconds earlier, then None (decode from the top)."""
        info = self.info
        targets = []
        for back in (0.0, *SEEK_RETRIES_S):
            target = first_pts - round(Fraction(back) / info.time_base)
            if target <= info.start_pts:
                break
            targets.append(target)
        return [*targets, None]

    def iter_chunks(
        self, chunk_size: int = 16, start: float | None = None, end: float | None = None
    ) -> Iterator[FrameChunk]:
        """Yield :class:`FrameChunk` of at most ``chunk_size`` frames (the last one may be shorter)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        info = self.info
        scale = float(info.time_base)
        buffer: np.ndarray | None = None
        pts: list[int] = []
        indices: list[int] = []
        for rgb, frame_pts, index in self.iter_frames(start, end):
            if buffer is None:
                buffer = np.empty((chunk_size, *rgb.shape), dtype=np.uint8)
            buffer[len(pts)] = rgb
            pts.append(frame_pts)
            indices.append(index)
            if len(pts) == chunk_size:
                yield _chunk(buffer, pts, indices, info.start_pts, scale)
                buffer, pts, indices = None, [], []
        if pts:
            yield _chunk(buffer[: len(pts)], pts, indices, info.start_pts, scale)


def deinterlaced(frames: Iterable[av.VideoFrame], stream) -> Iterator[av.VideoFrame]:
    """``frames`` (decoded from ``stream``) deinterlaced with FFmpeg's ``bwdif`` filter, one progressive frame per
    frame with its timestamp kept (``mode=send_frame``; each frame is made from its own two fields and its
    neighbours, the field order read from the frames; frames not flagged interlaced pass through unchanged). The
    filter holds one frame back and gives it up when the frames end."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    bwdif = graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
    sink = graph.add("buffersink")
    source.link_to(bwdif)
    bwdif.link_to(sink)
    graph.configure()

    stream_tb = Fraction(stream.time_base)

    def ready() -> Iterator[av.VideoFrame]:
        while True:
            try:
                frame = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            if frame.pts is not None and frame.time_base is not None and Fraction(frame.time_base) != stream_tb:
                # bwdif counts in half the stream's time base (its field mode doubles the rate): back to the stream's
                frame.pts = round(frame.pts * Fraction(frame.time_base) / stream_tb)
                frame.time_base = stream_tb
            yield frame

    for frame in frames:
        graph.push(frame)
        yield from ready()
    graph.push(None)
    yield from ready()


def _chunk(frames: np.ndarray, pts: list[int], indices: list[int], start_pts: int, scale: float) -> FrameChunk:
    pts_array = np.asarray(pts, dtype=np.int64)
    return FrameChunk(
        frames=frames,
        pts=pts_array,
        times=(pts_array - start_pts).astype(np.float64) * scale,
        indices=np.asarray(indices, dtype=np.int64),
    )


#: A time within this many ticks of a tick is that tick: floats such as ``info.frame_times()[k]`` carry rounding
#: error, and frame k's own time must select frame k.
_TICK_TOLERANCE = Fraction(1, 10**6)


def _ceil_ticks(seconds: float, time_base: Fraction) -> int:
    """Smallest tick count whose time is >= ``seconds`` (exact rational arithmetic on the float's value), where a
    time within :data:`_TICK_TOLERANCE` of a tick counts as that tick."""
    ticks = Fraction(seconds) / time_base
    nearest = round(ticks)
    if abs(ticks - nearest) <= _TICK_TOLERANCE:
        return nearest
    return -((-ticks.numerator) // ticks.denominator)
