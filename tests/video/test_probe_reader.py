"""Probing and streaming decode: exact rates, frame counts, flush, ranges, rotation, anamorphic pixels, VFR, bad
files."""

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from retarget.errors import InputError
from retarget.video import VideoReader, probe_video
from retarget.video.probe import open_input
from tests.video.synthetic import code_frame, make_video, read_code


@pytest.fixture(scope="module")
def ntsc(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "ntsc.mp4", 45, audio="aac")


def test_probe_keeps_rational_rate_and_counts_frames(ntsc):
    info = probe_video(ntsc)
    assert info.frame_rate == Fraction(30000, 1001)
    assert isinstance(info.frame_rate, Fraction)
    assert info.frame_count == 45
    assert (info.width, info.height) == (96, 64)
    assert info.rotation == 0 and not info.is_vfr
    assert info.duration == pytest.approx(45 * 1001 / 30000, abs=1e-9)
    assert info.audio is not None and info.audio.codec == "aac" and info.audio.sample_rate == 44100
    assert info.audio.channels == 2
    assert info.audio.duration == pytest.approx(45 * 1001 / 30000, abs=0.05)
    np.testing.assert_allclose(info.frame_times()[:3], [0, 1001 / 30000, 2002 / 30000])


def test_reader_returns_every_frame_in_order_with_bounded_chunks(ntsc):
    reader = VideoReader(ntsc)
    chunks = list(reader.iter_chunks(chunk_size=8))
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 8, 5]  # flushed: the B-frame tail is not lost
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape == (45, 64, 96, 3) and frames.dtype == np.uint8
    assert [read_code(f) for f in frames] == list(range(45))
    indices = np.concatenate([c.indices for c in chunks])
    assert indices.tolist() == list(range(45))
    times = np.concatenate([c.times for c in chunks])
    np.testing.assert_allclose(times, np.arange(45) * 1001 / 30000, atol=1e-9)
    assert np.abs(frames[10].astype(int) - code_frame(10, 96, 64)).mean() < 3


def test_time_range_selects_exact_frames(ntsc):
    reader = VideoReader(ntsc)
    start, end = 0.5, 1.0  # frames 15..29 (15 * 1001/30000 = 0.5005 s, 30 * 1001/30000 = 1.001 s)
    assert reader.frame_range(start, end) == (15, 30)
    got = [(index, read_code(rgb)) for rgb, _, index in reader.iter_frames(start, end)]
    assert got == [(k, k) for k in range(15, 30)]
    chunk = next(reader.iter_chunks(4, start=1.2))
    assert chunk.indices.tolist() == [36, 37, 38, 39]
    assert chunk.times[0] == pytest.approx(36 * 1001 / 30000)


@pytest.mark.parametrize("keyframe_interval", [None, 12])
def test_ranges_of_an_mpeg_ts_clip_are_exact(tmp_path, keyframe_interval, monkeypatch):
    # MPEG-TS has no index: a seek lands on a packet by timestamp, often not a keyframe, and the decoder then shows
    # nothing until the next keyframe (with x264's default GOP, none at all: a range read gave 0 frames).
    clip = make_video(tmp_path / "camcorder.ts", 60, audio="aac", keyframe_interval=keyframe_interval)
    import retarget.video.reader as reader_module

    opened = []
    monkeypatch.setattr(reader_module, "open_input", lambda path: opened.append(path) or open_input(path))
    reader = VideoReader(clip)
    for start, end in [(0.5, 1.0), (1.2, None), (0.0, 0.3)]:
        lo, hi = reader.frame_range(start, end)
        got = [(index, read_code(rgb)) for rgb, _, index in reader.iter_frames(start, end)]
        assert got == [(k, k) for k in range(lo, hi)]
    chunks = list(reader.iter_chunks(16, start=0.4))
    assert [read_code(f) for c in chunks for f in c.frames] == list(range(12, 60))
    if keyframe_interval is None:
        assert len(opened) > 4  # a seek missed and was tried again
    # a clip with an index seeks once
    opened.clear()
    mp4 = make_video(tmp_path / "indexed.mp4", 60, audio=None, keyframe_interval=keyframe_interval)
    assert [read_code(rgb) for rgb, _, _ in VideoReader(mp4).iter_frames(1.2, None)] == list(range(36, 60))
    assert len(opened) == 1


@pytest.mark.parametrize(("rotation", "turns"), [(90, 1), (-90, -1), (180, 2)])
def test_rotation_from_display_matrix_is_applied(tmp_path, rotation, turns):
    path = make_video(tmp_path / "rot.mp4", 5, 96, 64, audio=None, rotation=rotation)
    info = probe_video(path)
    assert info.rotation == rotation
    expected_size = (64, 96) if rotation in (90, -90) else (96, 64)
    assert (info.width, info.height) == expected_size
    assert (info.coded_width, info.coded_height) == (96, 64)
    frames = next(VideoReader(path).iter_chunks(5)).frames
    assert frames.shape[1:3] == (expected_size[1], expected_size[0])
    for k, frame in enumerate(frames):
        upright = np.rot90(frame, -turns)  # undo the display rotation: back to the coded picture
        assert read_code(upright) == k
        assert np.abs(frame.astype(int) - np.rot90(code_frame(k, 96, 64), turns)).mean() < 3


@pytest.mark.parametrize(("stored", "aspect", "rotation", "shown"), [
    ((72, 64), Fraction(4, 3), None, (96, 64)),  # wide pixels (HDV-like): the width is stretched
    ((108, 64), Fraction(8, 9), None, (96, 64)),  # narrow pixels (NTSC DV-like): the width is narrowed
    ((72, 64), Fraction(4, 3), 90, (64, 96)),  # along the stored width, before the rotation: the shown height
])
def test_anamorphic_pixels_are_resampled_to_square(tmp_path, stored, aspect, rotation, shown):
    path = make_video(tmp_path / "sar.mp4", 4, *stored, audio=None, rotation=rotation, pixel_aspect=aspect)
    info = probe_video(path)
    assert info.pixel_aspect == aspect and (info.coded_width, info.coded_height) == stored
    assert (info.width, info.height) == shown
    assert "stored %dx%d with pixel aspect %d:%d" % (*stored, aspect.numerator, aspect.denominator) in info.summary()
    frames = next(VideoReader(path).iter_chunks(4)).frames
    assert frames.shape == (4, shown[1], shown[0], 3)
    for k, frame in enumerate(frames):
        upright = frame if rotation is None else np.rot90(frame, -1)  # the stored picture's axes
        drawn = code_frame(k, *stored)
        # as drawn, stretched to square pixels by an independent resampler (the edges of the cells differ)
        expected = cv2.resize(drawn, (upright.shape[1], upright.shape[0]), interpolation=cv2.INTER_LINEAR)
        assert np.abs(upright.astype(int) - expected).mean() < 6
        assert read_code(cv2.resize(upright, stored, interpolation=cv2.INTER_AREA)) == k


def test_implausible_pixel_aspect_is_taken_as_square(tmp_path, caplog):
    path = make_video(tmp_path / "sar.mp4", 2, audio=None, pixel_aspect=Fraction(10))
    with caplog.at_level("WARNING", logger="retarget.video.probe"):
        info = probe_video(path)
        probe_video(path)  # a job probes a file several times: the warning is logged once, naming the file
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["sar.mp4: pixel aspect ratio 10 ignored (taken as square pixels)"]
    assert info.pixel_aspect == 1 and (info.width, info.height) == (96, 64)
    assert next(VideoReader(path, info).iter_chunks(2)).frames.shape == (2, 64, 96, 3)


def test_variable_frame_rate_detected_and_timestamps_kept(tmp_path):
    tb = Fraction(1, 90000)
    steps = [3003, 3003, 6006, 1501, 4504, 3003, 9009, 3003, 3003, 2002]
    pts = np.concatenate([[0], np.cumsum(steps)]).tolist()
    path = make_video(tmp_path / "vfr.mp4", len(pts), audio=None, pts=pts, time_base=tb)
    info = probe_video(path)
    assert info.is_vfr
    assert info.frame_count == len(pts)
    np.testing.assert_allclose(info.frame_times(), np.array(pts) / 90000, atol=1e-9)
    chunks = list(VideoReader(path).iter_chunks(4))
    times = np.concatenate([c.times for c in chunks])
    np.testing.assert_allclose(times, np.array(pts) / 90000, atol=1e-9)
    assert [read_code(f) for c in chunks for f in c.frames] == list(range(len(pts)))


def test_constant_rate_with_millisecond_time_base_is_not_vfr(tmp_path):
    path = make_video(tmp_path / "ms.mkv", 40, audio=None)
    info = probe_video(path)
    assert info.time_base == Fraction(1, 1000)
    assert not info.is_vfr
    assert info.frame_rate == Fraction(30000, 1001)
    assert info.frame_count == 40


def test_missing_empty_junk_and_audio_only_files_are_input_errors(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.mp4"
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.mp4"
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video\n" * 50)
    cases["junk"] = tmp_path / "junk.mp4"
    cases["folder"] = tmp_path
    import av

    with av.open(str(tmp_path / "tone.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases["audio only"] = tmp_path / "tone.m4a"
    for name, path in cases.items():
        with pytest.raises(InputError) as caught:
            probe_video(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, name


def _cover(container, size=32):
    """Add a one-picture MJPEG stream to ``container`` (before any other); returns the stream."""
    cover = container.add_stream("mjpeg", rate=1)
    cover.width = cover.height = size
    cover.pix_fmt = "yuvj420p"
    return cover


def _mux_picture(container, cover, size=32):
    import av

    picture = av.VideoFrame.from_ndarray(np.full((size, size, 3), 200, np.uint8), format="rgb24")
    for packet in [*cover.encode(picture), *cover.encode()]:
        packet.pts = packet.dts = 0
        container.mux(packet)


def test_the_clip_is_the_best_video_stream_not_a_picture_before_it(tmp_path):
    import av

    source = make_video(tmp_path / "source.mp4", 20, audio=None)
    # a one-picture track before the video (a preview or thumbnail track): the clip is the larger video after it
    path = tmp_path / "thumbnail_first.mkv"
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        cover = _cover(out)
        video = out.add_stream_from_template(src.streams.video[0])
        _mux_picture(out, cover)
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
    info = probe_video(path)
    assert info.stream_index == 1 and info.frame_count == 20 and (info.width, info.height) == (96, 64)
    assert [read_code(rgb) for rgb, _, _ in VideoReader(path).iter_frames(0.2, None)] == list(range(6, 20))
    # an audio file with cover art (an attached picture) has no video
    art = tmp_path / "song.mp4"  # (the .m4a muxer takes no picture)
    with av.open(str(art), "w") as out:
        cover = _cover(out)
        cover.disposition = av.stream.Disposition.attached_pic
        tone = out.add_stream("aac", rate=44100)
        _mux_picture(out, cover)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*tone.encode(frame), *tone.encode()]:
            out.mux(packet)
    with av.open(str(art)) as container:
        assert [s.type for s in container.streams] == ["audio", "video"]  # the picture is read as a video stream
    with pytest.raises(InputError, match="song.mp4: has no video stream"):
        probe_video(art)


def _interlaced_clip(path, frames=16, keyframe_interval=6):
    """Interlaced H.264 (top field first) of a bright bar that moves between the two fields of each frame, so a
    frame shown as stored has combed edges."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10", "g": str(keyframe_interval),
                          "x264-params": "interlaced=1:tff=1"}
        for k in range(frames):
            picture = np.full((96, 160, 3), 40, np.uint8)
            for row in range(96):
                left = 6 * k + (3 if row % 2 else 0)  # the bottom field is half a frame later
                picture[row, left:left + 30] = 220
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _combing(frames):
    """Mean of |2 * row - row above - row below| over the frames' grey levels: high for woven fields."""
    grey = np.asarray(frames, np.float64).mean(axis=-1)
    return float(np.abs(2 * grey[:, 1:-1] - grey[:, :-2] - grey[:, 2:]).mean())


def test_interlaced_clips_are_deinterlaced_frame_for_frame(tmp_path):
    import av

    clip = _interlaced_clip(tmp_path / "camcorder_1080i.mp4")
    info = probe_video(clip)
    assert info.interlaced and info.frame_count == 16
    assert not probe_video(make_video(tmp_path / "progressive.mp4", 4, audio=None)).interlaced
    with av.open(str(clip)) as container:
        woven = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    reader = VideoReader(clip)
    frames, pts, indices = zip(*reader.iter_frames())
    assert list(indices) == list(range(16)) and list(pts) == info.frame_pts.tolist()
    assert _combing(frames) < _combing(woven) / 4
    # a range is deinterlaced with the same neighbours as the whole clip (decoding starts a frame early)
    for start in (0.24, 0.4, 0.44):
        lo, hi = reader.frame_range(start, None)
        part = [rgb for rgb, _, _ in reader.iter_frames(start, None)]
        assert len(part) == hi - lo and all(np.array_equal(a, b) for a, b in zip(part, frames[lo:]))


def test_truncated_files_are_input_errors(tmp_path):
    normal = make_video(tmp_path / "a.mp4", 60, 160, 96, audio=None)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(normal.read_bytes()[: normal.stat().st_size // 2])  # index at the end: lost
    with pytest.raises(InputError, match="cut.mp4"):
        probe_video(cut)
    fast = make_video(tmp_path / "b.mp4", 60, 160, 96, audio=None, faststart=True)
    cut_fast = tmp_path / "cut_fast.mp4"
    cut_fast.write_bytes(fast.read_bytes()[: fast.stat().st_size * 2 // 3])  # index intact, data cut
    with pytest.raises(InputError, match="cut_fast.mp4"):
        reader = VideoReader(cut_fast)
        for _ in reader.iter_chunks(16):
            pass


@pytest.mark.parametrize("audio", [True, False])
def test_a_matroska_file_cut_short_is_an_input_error(tmp_path, audio):
    """A Matroska demuxer reads a file cut short to its cut without an error; its header's duration tells."""
    from retarget.testing.media import moving_face_frames, write_clip

    whole = write_clip(tmp_path / "whole.mkv", moving_face_frames(48), Fraction(25), audio=audio)
    assert probe_video(whole).frame_count == 48
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match=r"cut.mkv: truncated video: the file says it runs to 1\.9\d s, but its "
                                         r"data ends at 1\.\d\d s"):
        probe_video(cut)


def test_a_matroska_file_whose_timestamps_start_late_is_whole(tmp_path):
    """Packets copied into Matroska with their timestamps 2 s late (a stream recording, a cut copied without
    re-encoding): the header's duration runs to the last timestamp, so the file is complete."""
    from retarget.testing.media import moving_face_frames, write_clip

    source = write_clip(tmp_path / "source.mkv", moving_face_frames(48), Fraction(25), audio=True)
    late = tmp_path / "late.mkv"
    with av.open(str(source)) as original, av.open(str(late), "w") as copy:
        streams = {s.index: copy.add_stream_from_template(s) for s in original.streams}
        for packet in original.demux():
            if packet.dts is None:
                continue
            shift = int(2 / Fraction(packet.stream.time_base))
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = streams[packet.stream.index]
            copy.mux(packet)
    info = probe_video(late)
    assert info.frame_count == 48 and float(info.start_pts * info.time_base) == pytest.approx(2.0)
    data = late.read_bytes()
    (tmp_path / "late_cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match="late_cut.mkv: truncated video"):
        probe_video(tmp_path / "late_cut.mkv")


def test_a_frames_own_time_selects_that_frame(ntsc):
    """``frame_times()[k]`` is a float with rounding error; as a start it must still select frame k."""
    reader = VideoReader(ntsc)
    times = reader.info.frame_times()
    n = reader.info.frame_count
    assert [reader.frame_range(float(t), None) for t in times] == [(k, n) for k in range(n)]
    assert [reader.frame_range(None, float(t)) for t in times] == [(0, k) for k in range(n)]
