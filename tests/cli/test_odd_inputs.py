"""``run`` and ``edit`` on awkward clips: variable frame rate, a display-matrix rotation, anamorphic (non-square)
pixels, BT.709 tags on an SD picture, an odd size, 30000/1001 with AAC. Both keep the frame count, the timestamps
(VFR) or exact rate, and the audio; ``edit`` keeps the displayed size (rotation applied, pixels made square) and the
clip's colour tags, ``run`` tags BT.709."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from retarget.cli import main
from retarget.video.colour import SDR_BT709
from retarget.video.probe import probe_video
from retarget.testing.media import moving_face_frames, write_clip

VFR_STEPS = [3003, 3003, 6006, 1501, 4504, 3003, 9009, 3003]  # ticks of 1/90000 s between frames


def make_clip(kind: str, folder) -> tuple:
    """(path, displayed (width, height)) of one awkward clip with a real face."""
    path = folder / f"{kind}.mp4"
    if kind == "vfr":
        pts = np.concatenate([[0], np.cumsum(VFR_STEPS)]).tolist()
        write_clip(path, moving_face_frames(len(pts)), pts=pts, time_base=Fraction(1, 90000))
        return path, (160, 120)
    if kind == "rotated":
        write_clip(path, moving_face_frames(8, width=120, height=160), rotation=90)
        return path, (120, 160)
    if kind == "anamorphic":  # 4:3 pixels: the 160x120 pictures are stored 120x120
        write_clip(path, moving_face_frames(8), pixel_aspect=Fraction(4, 3))
        return path, (160, 120)
    if kind == "bt709":  # tagged BT.709 below 720 rows, where an untagged clip would count as BT.601
        write_clip(path, moving_face_frames(8), colour=SDR_BT709)
        return path, (160, 120)
    if kind == "odd_size":
        write_clip(path, moving_face_frames(8, width=161, height=121), rate=Fraction(25), pix_fmt="yuv444p")
        return path, (161, 121)
    write_clip(path, moving_face_frames(8), rate=Fraction(30000, 1001))
    return path, (160, 120)


@pytest.mark.parametrize("kind", ["vfr", "rotated", "anamorphic", "bt709", "odd_size", "ntsc_aac"])
@pytest.mark.parametrize("command", ["run", "edit"])
def test_awkward_clips_keep_count_timing_audio_and_size(kind, command, media, fast_args, tmp_path):
    clip, displayed = make_clip(kind, tmp_path)
    out = tmp_path / "out.mp4"
    target = ["--identity", str(media["photo"])] if command == "run" else ["--expression", str(media["photo"])]
    # 4:2:0 needs even sides: odd sizes keep their exact size in yuv444p (yuv420p pads one pixel, see below)
    pix_fmt = ["--pix-fmt", "yuv444p"] if kind == "odd_size" else []
    assert main([command, str(clip), *target, "-o", str(out), *pix_fmt, *fast_args]) == 0
    source, result = probe_video(clip), probe_video(out)
    assert result.frame_count == source.frame_count
    assert result.frame_rate == source.frame_rate
    assert result.is_vfr == source.is_vfr
    np.testing.assert_allclose(result.frame_times(), source.frame_times(), atol=1e-4)
    assert result.audio is not None and result.audio.codec == "aac"
    assert abs(result.audio.duration - source.audio.duration) < 0.001
    assert result.rotation == 0  # the rotation is applied to the pixels, not carried as metadata
    assert result.pixel_aspect == 1  # so is the pixel aspect
    if command == "edit":
        assert (result.width, result.height) == displayed
        assert result.colour == source.colour
    else:
        assert (result.width, result.height) == (32, 32)
        assert result.colour == SDR_BT709


def test_odd_size_in_yuv420p_is_padded_by_one_pixel(media, fast_args, tmp_path):
    clip, _ = make_clip("odd_size", tmp_path)
    out = tmp_path / "padded.mp4"
    assert main(["edit", str(clip), "--expression", str(media["photo"]), "-o", str(out), *fast_args]) == 0
    result = probe_video(out)
    assert (result.width, result.height) == (162, 122) and result.frame_count == 8


def test_timecode_is_kept_by_edit_and_moved_to_the_range_by_run(media, fast_args, tmp_path):
    import av

    if int(av.__version__.split(".")[0]) < 18:
        pytest.skip("PyAV 17 writes no timecode track for a copied stream")
    clip = write_clip(tmp_path / "shot.mov", moving_face_frames(12), rate=Fraction(30000, 1001), timecode="01:00:00;00")
    assert probe_video(clip).timecode == "01:00:00;00"
    edited, driven = tmp_path / "edited.mov", tmp_path / "driven.mov"
    assert main(["edit", str(clip), "--expression", str(media["photo"]), "--start", "0.2", "-o", str(edited),
                 *fast_args]) == 0
    assert main(["run", str(clip), "--identity", str(media["photo"]), "--start", "0.2", "-o", str(driven),
                 *fast_args]) == 0
    assert probe_video(edited).timecode == "01:00:00;00"  # the whole clip, as the source
    assert probe_video(driven).timecode == "01:00:00;06"  # from frame 6 (0.2002 s), the range's first
    assert probe_video(driven).frame_count == 6
