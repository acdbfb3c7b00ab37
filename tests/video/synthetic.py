"""Synthetic test videos made with PyAV: frame numbers drawn as a binary code, optional AAC/PCM audio,
variable frame rate, display-matrix rotation, anamorphic pixels, odd sizes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 10


def code_frame(index: int, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: the top half holds ``index`` as BITS black/white cells (most significant bit
    left), the bottom-left quarter a red marker (orientation), the rest mid grey."""
    frame = np.full((height, width, 3), 128, np.uint8)
    cell = width // BITS
    for bit in range(BITS):
        on = (index >> (BITS - 1 - bit)) & 1
        frame[: height // 2, bit * cell : (bit + 1) * cell] = 235 if on else 16
    frame[3 * height // 4 :, : width // 4] = (220, 20, 20)
    return frame


def read_code(frame: np.ndarray) -> int:
    """The index drawn by :func:`code_frame` (frame in its original orientation and size)."""
    height, width = frame.shape[:2]
    cell = width // BITS
    value = 0
    for bit in range(BITS):
        patch = frame[height // 8 : 3 * height // 8, bit * cell + cell // 4 : (bit + 1) * cell - cell // 4]
        value = (value << 1) | int(patch.mean() > 128)
    return value


def make_video(
    path: Path,
    frames: int,
    width: int = 96,
    height: int = 64,
    rate: Fraction = Fraction(30000, 1001),
    *,
    audio: str | None = "aac",
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    faststart: bool = False,
    pixel_aspect: Fraction | None = None,
    keyframe_interval: int | None = None,
    timecode: str | None = None,
) -> Path:
    """Write a test clip. ``pts`` (with ``time_base``) gives variable timestamps; ``audio`` is an audio codec
    name (a 440 Hz tone, 44.1 kHz stereo, as long as the video) or None; ``rotation`` sets the display matrix
    (degrees counter-clockwise); ``pixel_aspect`` the sample aspect ratio (anamorphic pixels; the pictures are drawn
    at the stored size); ``keyframe_interval`` the x264 GOP length in frames (default: x264's 250); ``timecode``
    the start timecode (a timecode track in MOV/MP4, a tag in Matroska)."""
    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), mode="w", options=options)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    tb = time_base if time_base is not None else 1 / rate
    stream.codec_context.time_base = tb
    if codec == "libx264":
        stream.options = {"preset": "ultrafast", "crf": "12"}
        if keyframe_interval is not None:
            stream.options = {**stream.options, "g": str(keyframe_interval)}
    if timecode is not None:
        stream.metadata["timecode"] = timecode
    if rotation is not None:
        stream.set_display_rotation(rotation)
    if pixel_aspect is not None:
        stream.codec_context.sample_aspect_ratio = pixel_aspect
    a_stream = None
    if audio:
        a_stream = container.add_stream(audio, rate=44100, options={"strict": "-2"} if audio == "vorbis" else None)
        a_stream.layout = "stereo"
    for i in range(frames):
        picture = av.VideoFrame.from_ndarray(code_frame(i, width, height), format="rgb24")
        picture.pts = pts[i] if pts is not None else i
        picture.time_base = tb
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    if a_stream is not None:
        end_ticks = (pts[-1] + (pts[-1] - pts[-2])) if pts is not None else frames
        seconds = float(end_ticks * tb)
        total = int(round(seconds * 44100))
        t = np.arange(total) / 44100
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        fmt = "fltp" if audio in ("aac", "vorbis") else "s16"
        for start in range(0, total, 1024):
            block = tone[start : start + 1024]
            if fmt == "fltp":
                data = np.stack([block, block])
            else:
                data = np.repeat((block * 32767).astype(np.int16), 2)[None]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="stereo")
            frame.sample_rate = 44100
            frame.pts = start
            frame.time_base = Fraction(1, 44100)
            for packet in a_stream.encode(frame):
                container.mux(packet)
        for packet in a_stream.encode():
            container.mux(packet)
    container.close()
    return path


def audio_packets(path: Path) -> list[bytes]:
    """Payload bytes of every audio packet of the file's first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [bytes(packet) for packet in container.demux(stream) if packet.size]


def video_pts_seconds(path: Path) -> list[Fraction]:
    """Exact presentation times (Fractions of a second) of the decoded video frames, from the first frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        pts = sorted(frame.pts for frame in container.decode(stream))
    return [(p - pts[0]) * tb for p in pts]
