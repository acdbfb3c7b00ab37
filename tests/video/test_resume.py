"""Resumable rendering: a crash mid-way resumes from the last finished chunk; changed jobs start over."""

from fractions import Fraction

import av
import numpy as np
import pytest

from retarget.video import AudioSource, ChunkedRender, EncoderSettings, VideoReader, file_identity, probe_video
from tests.video.synthetic import audio_packets, code_frame, make_video, read_code, video_pts_seconds

FAST = EncoderSettings(preset="ultrafast")
#: PyAV 17 (the newest on Python 3.10) passes no frame rate to the muxer for a copied stream: its .mkv outputs are
#: read at 1000/33 (constant rate) or without a rate (variable rate) whatever the code sets
PYAV_WRITES_RATE = int(av.__version__.split(".")[0]) >= 18


class Crash(Exception):
    pass


def render(job, rendered, crash_at=None, width=96, height=64):
    for span in job.pending_chunks():
        if span.index == crash_at:
            raise Crash(f"killed at chunk {span.index}")
        rendered.append(span.index)
        job.save_chunk(span.index, np.stack([code_frame(k, width, height) for k in range(span.start, span.stop)]))


def test_resume_after_crash_renders_only_missing_chunks(tmp_path):
    source = make_video(tmp_path / "driving.mp4", 50, audio="aac")
    info = probe_video(source)
    out = tmp_path / "out.mp4"
    key = {"driving": file_identity(source), "seed": 1}

    def job():
        return ChunkedRender(out, key, info.frame_count, 12, info.frame_rate, settings=FAST)

    rendered = []
    with pytest.raises(Crash):
        render(job(), rendered, crash_at=2)
    assert rendered == [0, 1]
    assert not out.exists()
    work = tmp_path / "out.mp4.retarget-work"
    assert sorted(p.name for p in work.iterdir()) == ["chunk_000000.mp4", "chunk_000001.mp4", "manifest.json"]

    # a job killed while joining its output left its temporary file; the next job of that output removes it, and
    # nothing of another output's
    stale = tmp_path / ".out.partial-0123456789ab.mp4"
    stale.write_bytes(b"half a video")
    others = [tmp_path / ".out.partial-0123456789ab.mkv", tmp_path / ".out2.partial-0123456789ab.mp4"]
    for other in others:
        other.write_bytes(b"not this job's")
    resumed = job()
    assert not stale.exists() and all(other.exists() for other in others)
    for other in others:
        other.unlink()
    assert [s.index for s in resumed.pending_chunks()] == [2, 3, 4]
    assert resumed.done_frames() == 24
    render(resumed, rendered)
    assert rendered == [0, 1, 2, 3, 4]
    resumed.finalize(audio=AudioSource(source), progress=False)

    assert not work.exists()
    result = probe_video(out)
    assert result.frame_count == 50 and result.frame_rate == Fraction(30000, 1001)
    assert video_pts_seconds(out) == [Fraction(k * 1001, 30000) for k in range(50)]
    frames = np.concatenate([c.frames for c in VideoReader(out).iter_chunks(25)])
    assert [read_code(f) for f in frames] == list(range(50))
    assert audio_packets(out) == audio_packets(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driving.mp4", "out.mp4"]


def test_changed_job_discards_stale_chunks(tmp_path):
    out = tmp_path / "out.mp4"
    rendered = []
    with pytest.raises(Crash):
        render(ChunkedRender(out, {"seed": 1}, 30, 10, 25, settings=FAST), rendered, crash_at=2)
    again = ChunkedRender(out, {"seed": 1}, 30, 10, 25, settings=FAST)
    assert [s.index for s in again.pending_chunks()] == [2]
    changed = ChunkedRender(out, {"seed": 2}, 30, 10, 25, settings=FAST)
    assert [s.index for s in changed.pending_chunks()] == [0, 1, 2]
    assert not list((tmp_path / "out.mp4.retarget-work").glob("chunk_*"))
    other_codec = ChunkedRender(out, {"seed": 2}, 30, 10, 25, settings=EncoderSettings(crf=30, preset="ultrafast"))
    assert len(other_codec.pending_chunks()) == 3


def test_lost_chunk_file_is_rendered_again_and_finalize_refuses_gaps(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(Crash):
        render(ChunkedRender(out, {"k": 1}, 20, 10, 25, settings=FAST), [], crash_at=1)
    (tmp_path / "out.mp4.retarget-work" / "chunk_000000.mp4").write_bytes(b"damaged")
    job = ChunkedRender(out, {"k": 1}, 20, 10, 25, settings=FAST)
    assert [s.index for s in job.pending_chunks()] == [0, 1]
    with pytest.raises(RuntimeError, match="not rendered"):
        job.finalize(progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="needs 10 frames"):
        job.save_chunk(0, np.zeros((3, 64, 96, 3), np.uint8))


def test_variable_rate_job_keeps_timestamps(tmp_path):
    tb = Fraction(1, 90000)
    pts = np.concatenate([[0], np.cumsum([3003, 6006, 1501, 4504, 3003, 9009, 3003, 2002, 3003, 3003, 1501])])
    out = tmp_path / "vfr.mp4"
    job = ChunkedRender(out, {"k": 1}, len(pts), 4, Fraction(30000, 1001), settings=FAST, time_base=tb, pts=pts)
    render(job, [])
    job.finalize(progress=False)
    assert video_pts_seconds(out) == [Fraction(int(p), 90000) for p in pts]
    frames = np.concatenate([c.frames for c in VideoReader(out).iter_chunks(16)])
    assert [read_code(f) for f in frames] == list(range(len(pts)))
    # in Matroska (millisecond times) the nominal rate is written, so readers do not take it for 1000 fps
    mkv = tmp_path / "vfr.mkv"
    job = ChunkedRender(mkv, {"k": 1}, len(pts), 4, Fraction(30000, 1001), settings=FAST, time_base=tb, pts=pts)
    render(job, [])
    job.finalize(progress=False)
    if PYAV_WRITES_RATE:
        with av.open(str(mkv)) as container:
            assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    assert video_pts_seconds(mkv) == [Fraction(round(int(p) / 90), 1000) for p in pts]


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers_join_every_frame_with_exact_times(tmp_path, suffix):
    """Matroska keeps no decode timestamps for B-frames, so chunks are MP4 files whatever the output container;
    the joined .mkv / .mov holds every frame, in order, at the exact rate, with the audio."""
    source = make_video(tmp_path / "driving.mp4", 30, audio="aac")
    info = probe_video(source)
    out = tmp_path / f"out{suffix}"
    job = ChunkedRender(out, {"seed": 1}, info.frame_count, 8, info.frame_rate, settings=FAST)
    render(job, [])
    job.finalize(audio=AudioSource(source), progress=False)
    result = probe_video(out)
    assert result.frame_count == 30 and result.frame_rate == Fraction(30000, 1001)
    assert result.audio is not None
    if PYAV_WRITES_RATE:  # the rate readers take as nominal (Matroska: not 1000/33)
        with av.open(str(out)) as container:
            assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    frames = np.concatenate([c.frames for c in VideoReader(out).iter_chunks(16)])
    assert [read_code(f) for f in frames] == list(range(30))
    times = result.frame_times()
    assert np.allclose(times, np.arange(30) * 1001 / 30000, atol=1e-3)  # Matroska's time base is 1 ms


@pytest.mark.parametrize("suffix, tag", [(".mp4", "hvc1"), (".mov", "hvc1"), (".mkv", None)])
def test_hevc_in_mp4_and_mov_is_tagged_for_apple_players(tmp_path, suffix, tag):
    """FFmpeg tags HEVC in MP4/MOV ``hev1``, which QuickTime, Safari and iOS refuse; chunks and the joined output
    carry ``hvc1``. Matroska has no such tag."""
    import av

    settings = EncoderSettings(codec="libx265", preset="ultrafast")
    out = tmp_path / f"out{suffix}"
    job = ChunkedRender(out, {"seed": 1}, 12, 4, Fraction(25), settings=settings)
    render(job, [])
    job.finalize(progress=False)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc"
        assert stream.codec_context.codec_tag == (tag or "\0\0\0\0")
        assert [read_code(f.to_ndarray(format="rgb24")) for f in container.decode(stream)] == list(range(12))


@pytest.mark.parametrize("last_chunk", [1, 2, 5])
def test_a_short_last_chunk_keeps_the_decode_times_even(tmp_path, last_chunk):
    """x264 at the default preset delays decoding by its B-frames, but a chunk of one or two frames has none: the
    join must keep the decode timestamps one frame apart, or the container's per-frame durations (and the
    average frame rate players read from them) come out wrong for an exactly timed video."""
    import av

    total = 16 + last_chunk
    out = tmp_path / "out.mp4"
    job = ChunkedRender(out, {"seed": 1}, total, 8, Fraction(30), settings=EncoderSettings())  # medium: B-frames
    render(job, [])
    job.finalize(progress=False)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 30
        packets = [p for p in container.demux(stream) if p.size]
        dts = [p.dts for p in packets]
        assert all(p.dts <= p.pts for p in packets)
        step = round(1 / (30 * stream.time_base))
    assert len(dts) == total and np.diff(dts).tolist() == [step] * (total - 1)
    assert video_pts_seconds(out) == [Fraction(k, 30) for k in range(total)]
    frames = np.concatenate([c.frames for c in VideoReader(out).iter_chunks(16)])
    assert [read_code(f) for f in frames] == list(range(total))


def test_joined_output_carries_every_audio_stream(tmp_path):
    from tests.video.test_writer_audio import _stream_packets, _two_tracks

    source = _two_tracks(tmp_path)
    job = ChunkedRender(tmp_path / "out.mp4", {"seed": 1}, 30, 8, Fraction(30000, 1001), settings=FAST)
    render(job, [])
    job.finalize(audio=AudioSource(source), progress=False)
    for index in (0, 1):
        assert _stream_packets(tmp_path / "out.mp4", index) == _stream_packets(source, index)
