"""Probing a video file: rational frame rate, exact frame count, display size and rotation, audio, VFR.

The probe demuxes the whole video stream once (packets only, no decoding, a few milliseconds per thousand frames)
so the frame count and the presentation timestamps are exact even where the container header is missing or wrong,
and decodes only the first frame (to read the display matrix). It keeps one int64 per frame (the sorted
presentation timestamps), never pixels.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retarget.errors import InputError, require_file
from retarget.video.colour import SDR_BT601, ColourTags, stream_colour
from retarget.video.orientation import Orientation, orientation_from_display_matrix, pixel_aspect, square_pixel_width
from retarget.video.timecode import timecode_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file.

    ``duration`` is in seconds (sum of packet durations where the container gives them, else the stream header's).
    ``time_base`` is the stream's time base; ``start_time`` is the first packet's time in seconds.
    """

    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    time_base: Fraction
    start_time: float
    duration: float
    packet_count: int


@dataclass(frozen=True)
class VideoInfo:
    """What a caller needs to decode, align and re-encode a clip.

    Sizes: ``width``/``height`` are the display size in square pixels (after resampling anamorphic pixels, whose
    width is ``pixel_aspect`` times their height, and after rotation; see :mod:`retarget.video.orientation`),
    ``coded_width``/``coded_height`` the stored one. Times: ``frame_rate`` is exact (``Fraction(30000, 1001)`` for
    NTSC 29.97); for variable-frame-rate input (``is_vfr``) it is the mean rate and ``frame_pts`` are the real
    timestamps. ``frame_pts`` holds every frame's presentation timestamp in ``time_base`` units, sorted;
    ``start_pts`` is the first. ``duration`` in seconds runs from the first frame to the end of the last one.
    ``colour``: the matrix the frames are decoded with, and the primaries and transfer, from the stream's tags or,
    where they are missing, as a browser takes them (see :mod:`retarget.video.colour`). ``stream_index``: the video
    stream that is the clip (see :func:`video_stream`). ``timecode``: the SMPTE timecode of the first frame
    (``"01:00:10:05"``; ``;`` before the frames for drop-frame), from a MOV/MP4 timecode track or a Matroska tag,
    else None; it is a valid timecode at ``frame_rate`` (see :mod:`retarget.video.timecode`). ``interlaced``: the
    first frame is flagged interlaced (1080i camcorder and broadcast video), so the reader deinterlaces the clip.
    """

    path: Path
    format_name: str
    codec: str
    pix_fmt: str | None
    width: int
    height: int
    coded_width: int
    coded_height: int
    orientation: Orientation
    frame_rate: Fraction
    frame_count: int
    time_base: Fraction
    start_pts: int
    duration: float
    is_vfr: bool
    audio: AudioInfo | None
    frame_pts: np.ndarray = field(repr=False, compare=False)
    pixel_aspect: Fraction = Fraction(1)
    colour: ColourTags = SDR_BT601
    stream_index: int = 0
    timecode: str | None = None
    interlaced: bool = False

    @property
    def rotation(self) -> int:
        """Display rotation in degrees counter-clockwise, in (-180, 180] (0 when the file has no display matrix)."""
        return self.orientation.rotation

    def frame_times(self) -> np.ndarray:
        """float64 [frame_count]: each frame's presentation time in seconds from the first frame."""
        return ((self.frame_pts - self.start_pts) * float(self.time_base)).astype(np.float64)

    def summary(self) -> str:
        """One line for logs: ``WxH, RATE fps (VFR), N frames, rotation, audio``."""
        rate = f"{self.frame_rate.numerator}/{self.frame_rate.denominator}"
        audio = (
            f"{self.audio.codec} {self.audio.sample_rate} Hz {self.audio.channels} ch {self.audio.duration:.3f} s"
            if self.audio
            else "no audio"
        )
        vfr = " (variable)" if self.is_vfr else ""
        aspect = "" if self.pixel_aspect == 1 else (
            f" (stored {self.coded_width}x{self.coded_height} with pixel aspect "
            f"{self.pixel_aspect.numerator}:{self.pixel_aspect.denominator})")
        return (
            f"{self.path.name}: {self.width}x{self.height}{aspect}, {rate} fps{vfr}, {self.frame_count} frames, "
            f"{self.duration:.3f} s, rotation {self.rotation}, colour {self.colour.describe()}, {audio}"
        )


def open_input(path: str | os.PathLike) -> av.container.InputContainer:
    """Open ``path`` for reading with PyAV, turning every failure into one-line :class:`InputError`."""
    path = require_file(path, "a video file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: not a readable video file ({_reason(error)})") from error


def _reason(error: BaseException) -> str:
    """FFmpeg's words for ``error``: its first line without the file name and errno PyAV adds
    (``[Errno 1094995529] Invalid data found when processing input: 'x.mp4'`` becomes
    ``Invalid data found when processing input``)."""
    strerror = getattr(error, "strerror", None)
    if isinstance(strerror, str) and strerror.strip():
        return strerror.strip().splitlines()[0]
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    return re.sub(r"^\[Errno -?\d+\] ", "", message.split(": '", 1)[0])


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The 9 int32 of a decoded frame's display matrix side data, or ``None``.

    PyAV 18 iterates a frame's side data as ``SideData`` entries; PyAV 19 iterates it as a mapping whose keys are
    the ``Type`` enum members. Both are read here.
    """
    container = frame.side_data
    for item in container:
        entry = container[item] if isinstance(item, enum.Enum) else item
        if entry.type.name == "DISPLAYMATRIX":
            return np.frombuffer(bytes(entry), dtype="<i4")[:9].copy()
    return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Probe ``path``; raises :class:`InputError` (one line naming the file) for missing/empty/corrupt/truncated
    files, files without a video stream and files whose video stream has no decodable frame."""
    path = Path(path)
    container = open_input(path)
    try:
        return _probe(path, container)
    except av.error.FFmpegError as error:
        raise InputError(f"{path}: damaged or truncated video ({_reason(error)})") from error
    finally:
        container.close()


def video_stream(container: av.container.InputContainer):
    """The clip's video stream: the one FFmpeg picks as best (``av_find_best_stream``: not a cover picture, and the
    largest picture among the rest), as players do; None for a file without video. A file with a cover picture or
    a thumbnail track before its video (cover art from a downloader, a camera's preview track) is read as its
    video, not as the picture."""
    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not candidates:
        return None
    best = container.streams.best("video")
    return best if best in candidates else candidates[0]


def _probe(path: Path, container: av.container.InputContainer) -> VideoInfo:
    stream = video_stream(container)
    if stream is None:
        raise InputError(f"{path}: has no video stream")
    if stream.time_base is None:
        raise InputError(f"{path}: video stream has no time base")
    audio_stream = container.streams.audio[0] if container.streams.audio else None
    streams = [stream] + ([audio_stream] if audio_stream is not None else [])

    pts: list[int] = []
    audio_packets = 0
    audio_first: int | None = None
    audio_end: int | None = None
    first_frame: av.VideoFrame | None = None
    pending_dts: list[int] = []
    for packet in container.demux(streams):
        if packet.stream.index == stream.index:
            if packet.size == 0:
                continue
            if packet.pts is not None:
                pts.append(packet.pts)
            elif packet.dts is not None:
                pending_dts.append(packet.dts)
            if first_frame is None:
                frames = stream.decode(packet)
                if frames:
                    first_frame = frames[0]
        elif packet.size:
            audio_packets += 1
            if packet.pts is not None:
                audio_first = packet.pts if audio_first is None else min(audio_first, packet.pts)
                end = packet.pts + (packet.duration or 0)
                audio_end = end if audio_end is None else max(audio_end, end)
    if first_frame is None:
        for frame in stream.decode(None):
            first_frame = frame
            break
    if not pts and pending_dts:
        pts = pending_dts  # elementary streams without pts: decode order equals display order
    if first_frame is None or not pts:
        raise InputError(f"{path}: video stream has no decodable frames")

    time_base = Fraction(stream.time_base)
    frame_pts = np.sort(np.asarray(pts, dtype=np.int64))
    frame_rate, is_vfr = _frame_rate(path, stream, frame_pts, time_base)
    frame_count = int(frame_pts.size)
    duration = float((int(frame_pts[-1] - frame_pts[0])) * time_base + 1 / frame_rate)
    _check_complete(path, container, streams, float(frame_pts[-1] * time_base + 1 / frame_rate),
                    None if audio_end is None else float(audio_end * Fraction(audio_stream.time_base)), frame_rate)

    with warnings.catch_warnings(record=True) as caught:  # doubtful metadata: said once per file, with its name
        warnings.simplefilter("always")
        orientation = orientation_from_display_matrix(display_matrix(first_frame))
        aspect = pixel_aspect(stream)
    for warning in caught:
        _warn_once(path, str(warning.message))
    coded_width, coded_height = first_frame.width, first_frame.height
    width, height = orientation.display_size(square_pixel_width(coded_width, aspect), coded_height)

    audio = None
    if audio_stream is not None:
        audio_tb = Fraction(audio_stream.time_base)
        codec_context = audio_stream.codec_context
        if audio_first is not None and audio_end is not None:
            audio_start, audio_duration = float(audio_first * audio_tb), float((audio_end - audio_first) * audio_tb)
        else:
            audio_start = float((audio_stream.start_time or 0) * audio_tb)
            audio_duration = float((audio_stream.duration or 0) * audio_tb)
        audio = AudioInfo(
            index=audio_stream.index,
            codec=codec_context.name,
            sample_rate=int(codec_context.sample_rate or 0),
            channels=int(codec_context.channels or 0),
            layout=codec_context.layout.name if codec_context.layout else "",
            time_base=audio_tb,
            start_time=audio_start,
            duration=audio_duration,
            packet_count=audio_packets,
        )

    return VideoInfo(
        path=path,
        format_name=container.format.name,
        codec=stream.codec_context.name,
        pix_fmt=stream.codec_context.pix_fmt,
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        orientation=orientation,
        frame_rate=frame_rate,
        frame_count=frame_count,
        time_base=time_base,
        start_pts=int(frame_pts[0]),
        duration=duration,
        is_vfr=is_vfr,
        audio=audio,
        frame_pts=frame_pts,
        pixel_aspect=aspect,
        colour=stream_colour(first_frame),
        stream_index=stream.index,
        timecode=_timecode(container, stream, frame_rate),
        interlaced=bool(first_frame.interlaced_frame),
    )


def _check_complete(path: Path, container: av.container.InputContainer, streams: list, video_end: float,
                    audio_end: float | None, frame_rate: Fraction) -> None:
    """Raise :class:`InputError` for a Matroska/WebM file whose packets end well before the duration its header
    records (a file cut short: a download or copy that stopped, which a Matroska demuxer reads to its cut without
    an error; an MP4 cut short loses its index or fails when its frames are decoded). ``video_end``/``audio_end``:
    where the packets read end, in seconds. Checked only where the header's duration is the muxer's own record and
    every stream was read (another track may legitimately run longer). The header's duration is compared with where
    the packets end as it is: FFmpeg's Matroska muxer records the last timestamp there, so a file whose timestamps
    start late (a stream recording, a cut copied without re-encoding) has a duration that already includes its
    start."""
    if not container.format.name.startswith("matroska") or container.duration is None:
        return
    if any(s not in streams and not s.disposition & av.stream.Disposition.attached_pic for s in container.streams):
        return
    declared = container.duration / 1e6  # AV_TIME_BASE
    end = max(video_end, audio_end or 0.0)
    if end < declared - 0.05 * declared - 2 / float(frame_rate):
        raise InputError(f"{path}: truncated video: the file says it runs to {declared:.2f} s, but its data ends at "
                         f"{end:.2f} s")


_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, message: str) -> None:
    """Log ``message`` about the file ``path`` as a warning, once per process (a job probes a file several times)."""
    key = (str(path), message)
    if key not in _warned:
        _warned.add(key)
        log.warning("%s: %s", path.name, message)


def _timecode(container: av.container.InputContainer, stream, rate: Fraction) -> str | None:
    """The start timecode FFmpeg reports: the video stream's ``timecode`` tag (MOV/MP4 timecode tracks are also read
    into it; Matroska's ``TIMECODE``), else the container's or a data stream's; None when absent or not a timecode
    at ``rate``."""
    sources = [stream.metadata, container.metadata, *(s.metadata for s in container.streams if s.type == "data")]
    for tags in sources:
        for key, value in tags.items():
            if key.lower() == "timecode":
                try:
                    timecode_frames(value, rate)
                except ValueError:
                    continue
                return value.strip()
    return None


def _frame_rate(
    path: Path, stream: av.video.stream.VideoStream, frame_pts: np.ndarray, time_base: Fraction
) -> tuple[Fraction, bool]:
    """(rate, is_vfr) from the sorted timestamps; the container's nominal rate when it matches them.

    Timestamps count as constant-rate when all frame intervals lie within 2 ticks (or 1 %) of each other, which
    absorbs the rounding of e.g. 29.97 fps to a millisecond time base.
    """
    nominal = stream.base_rate or stream.guessed_rate or stream.average_rate
    nominal = Fraction(nominal) if nominal else None
    if frame_pts.size < 2:
        return (nominal if nominal else Fraction(25)), False
    deltas = np.diff(frame_pts)
    median = float(np.median(deltas))
    if median <= 0:
        raise InputError(f"{path}: video timestamps are not increasing")
    spread = float(deltas.max() - deltas.min())
    is_vfr = spread > max(2.0, 0.01 * median)
    if not is_vfr:
        if nominal and abs(float(1 / (nominal * time_base)) - median) <= 1.0:
            return nominal, False
        return 1 / (Fraction(int(round(median))) * time_base), False
    mean = Fraction(int(frame_pts.size - 1)) / (Fraction(int(frame_pts[-1] - frame_pts[0])) * time_base)
    average = Fraction(stream.average_rate) if stream.average_rate else None
    if average and abs(float(average - mean)) < 1e-3 * float(mean):
        return average, True
    return mean.limit_denominator(1_000_000), True
