"""SMPTE timecodes: drop-frame and non-drop-frame arithmetic, reading a clip's timecode, keeping it in outputs."""

from fractions import Fraction

import av
import numpy as np
import pytest

from retarget.video import ChunkedRender, EncoderSettings, probe_video
from retarget.video.timecode import format_timecode, offset_timecode, timecode_frames
from tests.video.synthetic import code_frame, make_video

NTSC = Fraction(30000, 1001)


def test_drop_frame_skips_two_numbers_a_minute_except_every_tenth():
    assert offset_timecode("00:00:59;29", 1, NTSC) == "00:01:00;02"  # ;00 and ;01 do not exist
    assert offset_timecode("00:09:59;29", 1, NTSC) == "00:10:00;00"  # the tenth minute keeps them
    assert offset_timecode("00:01:00;02", -1, NTSC) == "00:00:59;29"
    assert timecode_frames("01:00:00;00", NTSC) == (107892, True)  # one hour of 29.97 fps video, to the frame
    assert offset_timecode("00:00:00;00", 216000, Fraction(60000, 1001)) == "01:00:03;36"  # 4 a minute at 59.94
    assert offset_timecode("23:59:59;29", 1, NTSC) == "00:00:00;00"  # wraps at 24 hours
    for number in range(0, 24 * 107892, 997):  # every drop-frame timecode of a day names one frame
        assert timecode_frames(format_timecode(number, NTSC, drop=True), NTSC) == (number, True)


def test_non_drop_frame_counts_at_the_nominal_rate():
    assert offset_timecode("10:00:00:00", 25 * 3600, Fraction(25)) == "11:00:00:00"
    assert offset_timecode("00:59:59:23", 1, Fraction(24000, 1001)) == "01:00:00:00"
    assert offset_timecode("00:00:00:00", 90, NTSC) == "00:00:03:00"  # NDF at 29.97 drifts from the clock
    assert timecode_frames("01:02:03:04", Fraction(50)) == ((3723 * 50) + 4, False)


@pytest.mark.parametrize("text, rate", [("1:2:3", NTSC), ("00:00:00:30", NTSC), ("00:60:00:00", Fraction(25)),
                                        ("00:00:00;00", Fraction(25)), ("00:01:00;00", NTSC), ("24:00:00:00", NTSC)])
def test_what_is_not_a_timecode_at_the_rate_is_refused(text, rate):
    with pytest.raises(ValueError):
        timecode_frames(text, rate)


def _with_timecode(path, timecode, frames=12):
    return make_video(path, frames, audio=None, timecode=timecode)


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
def test_probe_reads_the_start_timecode(tmp_path, suffix):
    assert probe_video(_with_timecode(tmp_path / f"tc{suffix}", "01:00:10;05")).timecode == "01:00:10;05"
    assert probe_video(make_video(tmp_path / f"plain{suffix}", 4, audio=None)).timecode is None
    if suffix == ".mkv":  # a tag's text (MOV and MP4 store a frame count, which FFmpeg writes as a valid timecode)
        assert probe_video(_with_timecode(tmp_path / "bad.mkv", "01:00:10:45")).timecode is None  # not at 29.97


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
def test_joined_output_carries_the_timecode(tmp_path, suffix):
    if int(av.__version__.split(".")[0]) < 18 and suffix != ".mkv":
        pytest.skip("PyAV 17 writes no timecode track for a copied stream (the joined output's video)")
    job = ChunkedRender(tmp_path / f"out{suffix}", {"seed": 1}, 10, 4, NTSC,
                        settings=EncoderSettings(preset="ultrafast"))
    for span in job.pending_chunks():
        job.save_chunk(span.index, np.stack([code_frame(k, 96, 64) for k in range(span.start, span.stop)]))
    job.finalize(progress=False, timecode="10:00:00;02")
    assert probe_video(tmp_path / f"out{suffix}").timecode == "10:00:00;02"
