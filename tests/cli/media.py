"""Test media built from package photos: short clips with real faces (PyAV, exact rates, AAC audio)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def face_photo() -> np.ndarray:
    """scikit-image's astronaut (public domain), cropped around the face: uint8 [300, 300, 3]."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[0:300, 100:400])


def second_face_photo() -> np.ndarray:
    """insightface's bundled Tom Hanks photo: uint8 RGB."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    return np.asarray(Image.open(path).convert("RGB"))


def moving_face_frames(count: int, width: int = 160, height: int = 120, blank: tuple[int, ...] = (),
                       photo: np.ndarray | None = None) -> np.ndarray:
    """``count`` frames [count, height, width, 3]: the photo scaled to the frame height, shifted and scaled a
    little per frame on a grey background; frames listed in ``blank`` are plain grey (no face)."""
    photo = face_photo() if photo is None else photo
    frames = np.full((count, height, width, 3), 96, np.uint8)
    for k in range(count):
        if k in blank:
            continue
        scale = 1.0 + 0.04 * np.sin(k / 3.0)
        side = int(round(height * scale))
        face = np.asarray(Image.fromarray(photo).resize((side, side), Image.BILINEAR))
        x = (width - side) // 2 + int(round(6 * np.sin(k / 4.0)))
        y = (height - side) // 2
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + side, width), min(y + side, height)
        frames[k, y0:y1, x0:x1] = face[y0 - y : y1 - y, x0 - x : x1 - x]
    return frames


def write_clip(path: Path, frames: np.ndarray, rate: Fraction = Fraction(30000, 1001), audio: bool = True,
               sample_rate: int = 44100) -> Path:
    """Encode ``frames`` with libx264 at ``rate`` (exact) plus, with ``audio``, an AAC sine tone as long as the
    video."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "10", "preset": "ultrafast"}
    audio_stream = None
    if audio:
        audio_stream = container.add_stream("aac", rate=sample_rate)
        audio_stream.layout = "mono"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    if audio_stream is not None:
        total = int(round(len(frames) / rate * sample_rate))
        t = np.arange(total) / sample_rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, total, 1024):
            piece = samples[start : start + 1024][None]
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in audio_stream.encode(frame):
                container.mux(packet)
        for packet in audio_stream.encode(None):
            container.mux(packet)
    container.close()
    return path
