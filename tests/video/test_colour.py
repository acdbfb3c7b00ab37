"""Colour: inputs decoded with the matrix of their tags (or a browser's guess), outputs encoded with an explicit
matrix and tagged with it, checked against the standard BT.601/BT.709 formulas written out here."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from retarget.testing.media import write_clip
from retarget.video import VideoReader, probe_video
from retarget.video.colour import SDR_BT601, SDR_BT709, ColourTags, converts_matrix, untagged_colour
from retarget.video.encoding import EncoderSettings
from retarget.video.writer import VideoWriter

#: Kr, Kb of the luma equation (ITU-R BT.601 and BT.709); every other coefficient follows from them.
LUMA = {6: (0.299, 0.114), 1: (0.2126, 0.0722)}
#: Patches: greys, skin tones, saturated primaries.
PATCHES = [(128, 128, 128), (30, 30, 30), (200, 150, 120), (230, 190, 160), (120, 80, 60), (200, 80, 40),
           (40, 120, 200), (60, 180, 70), (235, 235, 235)]


def patches_picture(size: int = 8) -> np.ndarray:
    """uint8 ``[size, size * len(PATCHES), 3]``: one flat square per patch colour."""
    return np.concatenate([np.full((size, size, 3), colour, np.uint8) for colour in PATCHES], axis=1)


def limited_range_rgb(yuv: np.ndarray, matrix: int) -> np.ndarray:
    """RGB in [0, 255] from limited-range ``[3, H, W]`` Y, Cb, Cr planes, by the textbook equations of ``matrix``."""
    kr, kb = LUMA[matrix]
    kg = 1 - kr - kb
    y = (yuv[0].astype(np.float64) - 16) / 219
    cb = (yuv[1].astype(np.float64) - 128) / 224
    cr = (yuv[2].astype(np.float64) - 128) / 224
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / kg
    return np.stack([r, g, b], axis=-1) * 255


def written_planes(path) -> tuple[np.ndarray, av.video.codeccontext.VideoCodecContext]:
    """The first frame's yuv444p planes ``[3, H, W]`` as stored, and the stream's codec context (its tags)."""
    container = av.open(str(path))
    stream = container.streams.video[0]
    frame = next(container.decode(stream))
    assert frame.format.name == "yuv444p"
    planes = frame.to_ndarray()
    context = stream.codec_context
    container.close()
    return planes, context


@pytest.mark.parametrize("colour", [None, SDR_BT709, SDR_BT601])
def test_outputs_are_encoded_with_the_matrix_they_are_tagged_with(tmp_path, colour):
    picture = patches_picture()
    settings = EncoderSettings(crf=0, preset="ultrafast", pix_fmt="yuv444p", colour=colour)
    with VideoWriter(tmp_path / "out.mp4", Fraction(25), settings=settings) as writer:
        writer.write(picture)
    planes, context = written_planes(tmp_path / "out.mp4")
    expected = colour or SDR_BT709
    assert (context.colorspace, context.color_primaries, context.color_trc) == \
        (expected.matrix, expected.primaries, expected.transfer)
    assert context.color_range == 1  # limited
    # what a player computes from the planes with the tagged matrix gives back the written colours
    shown = limited_range_rgb(planes, expected.matrix)
    assert np.abs(shown - picture).max() <= 1.5
    other = 6 if expected.matrix == 1 else 1  # the other matrix would show them visibly otherwise
    assert np.abs(limited_range_rgb(planes, other) - picture).max() > 8


def test_rgb_pixel_formats_are_written_without_a_matrix(tmp_path):
    picture = patches_picture()
    settings = EncoderSettings(codec="libx264rgb", crf=0, preset="ultrafast", pix_fmt="bgr0")
    with VideoWriter(tmp_path / "out.mp4", Fraction(25), settings=settings) as writer:
        writer.write(picture)
    frames = next(VideoReader(tmp_path / "out.mp4").iter_chunks(1)).frames
    assert np.array_equal(frames[0], picture)


@pytest.mark.parametrize("colour", [SDR_BT709, SDR_BT601, ColourTags(9, 9, 18)], ids=["bt709", "bt601", "hlg"])
def test_tagged_inputs_are_read_with_their_matrix_and_kept_by_the_writer(tmp_path, colour):
    if not converts_matrix(colour.matrix):
        pytest.skip(f"this PyAV ({av.__version__}) converts matrix {colour.matrix} as BT.601")
    picture = patches_picture()
    clip = write_clip(tmp_path / "in.mp4", np.stack([picture] * 2), Fraction(25), audio=False,
                      pix_fmt="yuv444p", colour=colour)
    info = probe_video(clip)
    assert info.colour == colour and info.colour.hdr == (colour.transfer == 18)
    frames = next(VideoReader(clip).iter_chunks(2)).frames
    assert np.abs(frames[0].astype(int) - picture).max() <= 3
    # written again in the clip's colour (as edit does), it reads back the same
    settings = EncoderSettings(crf=0, preset="ultrafast", pix_fmt="yuv444p", colour=info.colour)
    with VideoWriter(tmp_path / "out.mp4", Fraction(25), settings=settings) as writer:
        writer.write(frames)
    assert probe_video(tmp_path / "out.mp4").colour == colour
    again = next(VideoReader(tmp_path / "out.mp4").iter_chunks(2)).frames
    assert np.abs(again.astype(int) - frames).max() <= 2


@pytest.mark.parametrize(("height", "expected"), [(64, SDR_BT601), (719, SDR_BT601), (720, SDR_BT709)])
def test_untagged_inputs_are_read_as_a_browser_reads_them(tmp_path, height, expected):
    """Untagged: BT.601 under 720 rows, BT.709 from 720 (Chromium's rule); PyAV's own default is BT.601 always."""
    assert untagged_colour(height) == expected
    picture = np.concatenate([patches_picture(8)] * (height // 8 + 1))[:height, :64]
    clip = write_clip(tmp_path / "untagged.mp4", picture[None], Fraction(25), audio=False, pix_fmt="yuv444p")
    context = av.open(str(clip)).streams.video[0].codec_context
    assert (context.colorspace, context.color_primaries, context.color_trc) == (2, 2, 2)  # nothing tagged
    assert probe_video(clip).colour == expected
    planes = written_planes(clip)[0]
    frame = next(VideoReader(clip).iter_chunks(1)).frames[0]
    assert np.abs(frame - limited_range_rgb(planes, expected.matrix)).max() <= 1.5


@pytest.mark.parametrize("pix_fmt", ["yuv444p10le", "yuv420p10le"])
def test_ten_bit_clips_are_read_to_the_nearest_level(tmp_path, pix_fmt):
    """A 10-bit clip is read with swscale's exact arithmetic: greys and colours within one level (its fast path read
    them about 2 levels dark)."""
    picture = patches_picture(16)
    clip = write_clip(tmp_path / "deep.mp4", picture[None], Fraction(25), audio=False, pix_fmt=pix_fmt,
                      colour=SDR_BT709)
    assert probe_video(clip).pix_fmt == pix_fmt
    frame = next(VideoReader(clip).iter_chunks(1)).frames[0]
    centres = [16 * k + 8 for k in range(len(PATCHES))]  # away from 4:2:0 chroma at the patches' edges
    assert np.abs(frame[4:12, centres].astype(int) - picture[4:12, centres]).max() <= 1


@pytest.mark.parametrize("colour", [SDR_BT601, SDR_BT709])
def test_pixels_passed_through_keep_their_luma(tmp_path, colour):
    """8-bit 4:2:0, as most clips are: the RGB read is the textbook conversion of the stored YUV without a bias
    (swscale's fast path read it about one luma level dark, so every pixel ``edit`` passed through came out darker),
    and writing it back losslessly with the clip's colour gives the stored luma (off in under 1% of the pixels, by up
    to 3 levels, where the stored YUV lies outside the RGB cube and the read clips it)."""
    from retarget.testing.media import moving_face_frames

    clip = write_clip(tmp_path / "clip.mp4", moving_face_frames(3, 96, 64), Fraction(25), audio=False,
                      colour=colour)
    with av.open(str(clip)) as container:
        stored = next(container.decode(video=0)).to_ndarray()  # yuv420p planes, [H * 3 / 2, W]
    luma, chroma = stored[:64].astype(np.float64), stored[64:].reshape(2, 32, 48).astype(np.float64)
    planes = np.stack([luma, *np.repeat(np.repeat(chroma, 2, axis=1), 2, axis=2)])
    frames = np.stack([frame for frame, _, _ in VideoReader(clip).iter_frames()])
    textbook = np.clip(limited_range_rgb(planes, colour.matrix), 0, 255)
    assert abs((frames[0] - textbook).mean()) < 0.3  # -1.0 before; chroma upsampling differs, little on average

    copy = tmp_path / "copy.mp4"
    with VideoWriter(copy, Fraction(25), settings=EncoderSettings(crf=0, preset="ultrafast", colour=colour)) as writer:
        writer.write(frames)
    with av.open(str(copy)) as container:
        rewritten = next(container.decode(video=0)).to_ndarray()
    difference = rewritten[:64].astype(int) - stored[:64]
    assert np.mean(difference != 0) < 0.01 and abs(difference.mean()) < 0.01
