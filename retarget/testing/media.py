"""Test media built from package photos: short clips with real faces (PyAV, exact rates, AAC audio)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from retarget.video.colour import ColourTags


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
                       photo: np.ndarray | None = None, covered: tuple[int, ...] = ()) -> np.ndarray:
    """``count`` frames [count, height, width, 3]: the photo scaled to the frame height, shifted and scaled a
    little per frame on a grey background; frames listed in ``blank`` are plain grey (no face: a cut to an empty
    shot and back), frames listed in ``covered`` have a grey band across the eyes, nose and mouth (rows a quarter
    to half of the height: the detector misses the face within the same shot)."""
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
        if k in covered:
            frames[k, height // 4:height // 2] = 96
    return frames


def two_face_frames(count: int, width: int = 320, height: int = 160) -> np.ndarray:
    """``count`` frames with two people: the astronaut small on the left, Tom Hanks large on the right (the largest
    face, so ``--face-index 0`` picks him)."""
    frames = np.full((count, height, width, 3), 96, np.uint8)
    small, large = height * 3 // 4, height
    left = np.asarray(Image.fromarray(face_photo()).resize((small, small), Image.BILINEAR))
    right = np.asarray(Image.fromarray(second_face_photo()).resize((large, large), Image.BILINEAR))
    top = (height - small) // 2
    frames[:, top : top + small, 10 : 10 + small] = left
    frames[:, :, width - large :] = right
    return frames


def write_clip(path: Path, frames: np.ndarray, rate: Fraction = Fraction(30000, 1001), audio: bool = True,
               sample_rate: int = 44100, *, pts: list[int] | None = None, time_base: Fraction | None = None,
               rotation: int | None = None, pix_fmt: str = "yuv420p", pixel_aspect: Fraction | None = None,
               colour: ColourTags | None = None, timecode: str | None = None) -> Path:
    """Encode ``frames`` (as displayed) with libx264 at ``rate`` (exact) plus, with ``audio``, an AAC sine tone as
    long as the video. ``pts`` with ``time_base`` give variable timestamps; ``rotation`` (degrees
    counter-clockwise, a multiple of 90) stores the pictures turned back and sets the display matrix, so a
    reader that applies it sees ``frames``. ``pixel_aspect`` (anamorphic video) stores the pictures with their
    width divided by it (area resampling) and sets that sample aspect ratio, so a reader that resamples to square
    pixels sees ``frames`` up to resampling. ``colour``: encode with that matrix and tag it (default: PyAV's own
    conversion, BT.601, untagged). ``timecode``: the start timecode (a timecode track in MOV/MP4). Odd sizes need a
    ``pix_fmt`` without chroma subsampling (yuv444p)."""
    turns = (rotation or 0) // 90
    coded = np.stack([np.rot90(frame, -turns) for frame in frames]) if turns else frames
    if pixel_aspect is not None:
        width = round(coded.shape[2] / pixel_aspect)
        coded = np.stack([cv2.resize(frame, (width, frame.shape[0]), interpolation=cv2.INTER_AREA) for frame in coded])
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = coded.shape[2], coded.shape[1]
    stream.pix_fmt = pix_fmt
    if pixel_aspect is not None:
        stream.codec_context.sample_aspect_ratio = Fraction(pixel_aspect)
    if colour is not None:
        context = stream.codec_context
        context.colorspace, context.color_primaries = colour.matrix, colour.primaries
        context.color_trc = colour.transfer
        context.color_range = 1
    stream.options = {"crf": "10", "preset": "ultrafast"}
    if timecode is not None:
        stream.metadata["timecode"] = timecode
    tb = time_base if time_base is not None else 1 / rate
    stream.codec_context.time_base = tb
    if rotation is not None:
        stream.set_display_rotation(rotation)
    audio_stream = None
    if audio:
        audio_stream = container.add_stream("aac", rate=sample_rate)
        audio_stream.layout = "mono"
    for k, frame in enumerate(coded):
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        if colour is not None:
            picture = picture.reformat(format=pix_fmt, dst_colorspace=colour.matrix, dst_color_range=1)
        picture.pts = pts[k] if pts is not None else k
        picture.time_base = tb
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    if audio_stream is not None:
        end_ticks = pts[-1] + (pts[-1] - pts[-2]) if pts is not None else len(frames)
        total = int(round(end_ticks * tb * sample_rate))
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
