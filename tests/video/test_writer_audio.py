"""Encoding: exact rate, frame count, copied audio bytes, ranges, re-encoding, VFR, odd sizes, atomic output."""

from fractions import Fraction

import av
import numpy as np
import pytest

from retarget.video import AudioSource, EncoderSettings, VideoReader, VideoWriter, probe_video
from retarget.video.encoding import encoded_size
from tests.video.synthetic import audio_packets, code_frame, make_video, read_code, video_pts_seconds

FAST = EncoderSettings(preset="ultrafast")


def transcode(source, target, *, start=None, end=None, settings=FAST, audio=True, vfr=False):
    reader = VideoReader(source)
    info = reader.info
    writer = VideoWriter(
        target, info.frame_rate, settings=settings, time_base=info.time_base if vfr else None,
        audio=AudioSource(source, start, end) if audio else None,
    )
    with writer:
        for chunk in reader.iter_chunks(8, start, end):
            writer.write(chunk.frames, chunk.pts if vfr else None)
    return target


@pytest.fixture(scope="module")
def ntsc(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("w") / "ntsc.mp4", 60, audio="aac")


def test_round_trip_keeps_rate_count_frames_and_audio_bytes(ntsc, tmp_path):
    out = transcode(ntsc, tmp_path / "out.mp4")
    info = probe_video(out)
    assert info.frame_rate == Fraction(30000, 1001)
    assert info.frame_count == 60
    assert video_pts_seconds(out)[-1] == Fraction(59 * 1001, 30000)
    frames = np.concatenate([c.frames for c in VideoReader(out).iter_chunks(16)])
    assert [read_code(f) for f in frames] == list(range(60))
    assert audio_packets(out) == audio_packets(ntsc)  # copied, byte for byte
    source_audio = probe_video(ntsc).audio
    assert info.audio.duration == pytest.approx(source_audio.duration, abs=1e-6)
    assert info.audio.packet_count == source_audio.packet_count
    assert not list(tmp_path.glob(".*partial*"))


def test_time_range_writes_range_frames_and_matching_audio(ntsc, tmp_path):
    out = transcode(ntsc, tmp_path / "range.mp4", start=0.5, end=1.5)
    info = probe_video(out)
    assert info.frame_count == 30  # frames 15..44
    first = next(VideoReader(out).iter_chunks(1)).frames[0]
    assert read_code(first) == 15
    assert info.audio.duration == pytest.approx(1.0, abs=2 * 1024 / 44100)  # packet granularity
    source = audio_packets(ntsc)
    copied = audio_packets(out)
    assert all(packet in source for packet in copied)


def test_audio_reencoded_when_container_cannot_hold_it(tmp_path):
    source = make_video(tmp_path / "alaw.mov", 30, audio="pcm_alaw")
    assert probe_video(source).audio.codec == "pcm_alaw"
    out = transcode(source, tmp_path / "out.mp4")
    info = probe_video(out)
    assert info.audio.codec == "aac"
    assert info.audio.duration == pytest.approx(30 * 1001 / 30000, abs=0.05)
    assert info.frame_count == 30


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_vorbis_is_copied_only_where_players_read_it(suffix, tmp_path):
    """The MP4 muxer accepts Vorbis under a private object type that browsers and QuickTime do not play: into
    MP4 and MOV it is re-encoded to AAC; Matroska, its own container, gets the packets as they are."""
    source = make_video(tmp_path / "vorbis.mkv", 30, audio="vorbis")
    assert probe_video(source).audio.codec == "vorbis"
    out = transcode(source, tmp_path / f"out{suffix}")
    info = probe_video(out)
    assert info.audio.codec == ("vorbis" if suffix == ".mkv" else "aac")
    assert info.audio.duration == pytest.approx(30 * 1001 / 30000, abs=0.05)
    if suffix == ".mkv":
        assert b"".join(audio_packets(out)) == b"".join(audio_packets(source))


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_pcm_without_channel_names_is_copied(suffix, tmp_path):
    # AVI stores PCM without a channel mask: it reads back as "2 channels", which the MP4 muxer refused when the
    # file was closed (EINVAL). The output stream is named stereo; the samples are copied byte for byte.
    source = make_video(tmp_path / "camera.avi", 30, audio="pcm_s16le")
    with av.open(str(source)) as container:
        assert container.streams.audio[0].codec_context.layout.name == "2 channels"
    out = transcode(source, tmp_path / f"out{suffix}")
    info = probe_video(out)
    assert info.audio.codec == "pcm_s16le"
    assert info.frame_count == 30
    assert b"".join(audio_packets(out)) == b"".join(audio_packets(source))
    with av.open(str(out)) as container:  # Matroska stores a channel count only
        expected = "2 channels" if suffix == ".mkv" else "stereo"
        assert container.streams.audio[0].codec_context.layout.name == expected


def test_pcm_without_channel_names_is_reencoded_where_needed(tmp_path):
    source = make_video(tmp_path / "camera.avi", 30, audio="pcm_s16le")
    out = transcode(source, tmp_path / "out.webm", settings=EncoderSettings(codec="libvpx-vp9", crf=40))
    info = probe_video(out)
    assert info.audio.codec == "opus"
    assert info.audio.duration == pytest.approx(30 * 1001 / 30000, abs=0.05)
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.layout.name == "stereo"


def _stream_packets(path, index):
    """Payload bytes of the packets of the file's ``index``-th audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[index]
        return [bytes(p) for p in container.demux(stream) if p.size]


def _two_tracks(tmp_path):
    """A 30-frame clip with two audio streams, as a camera's two microphones or a film's two languages: AAC tagged
    English and MP3 tagged German, each a tone as long as the video."""
    path = tmp_path / "two_tracks.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(30000, 1001))
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        tracks = []
        for codec, language in (("aac", "eng"), ("libmp3lame", "deu")):
            track = out.add_stream(codec, rate=44100)
            track.layout = "stereo"
            track.metadata["language"] = language
            tracks.append(track)
        for k in range(30):
            for packet in video.encode(av.VideoFrame.from_ndarray(code_frame(k, 96, 64), format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        samples = round(30 * 1001 / 30000 * 44100)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)
        for track in tracks:
            for first in range(0, samples, 1152):
                block = tone[first:first + 1152]
                frame = av.AudioFrame.from_ndarray(np.stack([block, block]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 44100, first
                for packet in track.encode(frame):
                    out.mux(packet)
            for packet in track.encode():
                out.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_every_audio_stream_is_carried_with_its_language(tmp_path, suffix):
    source = _two_tracks(tmp_path)
    with av.open(str(source)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac", "mp3float"]
    out = transcode(source, tmp_path / f"out{suffix}")
    with av.open(str(out)) as container:
        languages = [s.metadata.get("language") for s in container.streams.audio]
    assert languages[0] == "eng" and (languages[1] == "deu" or suffix == ".mov")  # QuickTime's codes have no "deu"
    for index in (0, 1):
        assert _stream_packets(out, index) == _stream_packets(source, index)  # both copied, byte for byte
    assert probe_video(out).frame_count == 30
    # a range cuts both
    part = transcode(source, tmp_path / f"part{suffix}", start=0.5, end=0.7)
    durations = []
    for index in (0, 1):
        with av.open(str(part)) as container:
            stream = container.streams.audio[index]
            durations.append(float(sum(p.duration for p in container.demux(stream) if p.size) * stream.time_base))
    assert all(abs(d - 0.2) < 0.06 for d in durations), durations  # to one packet (23 ms AAC, 26 ms MP3)


def test_the_source_is_probed_once_for_all_its_audio_streams(tmp_path, monkeypatch):
    import retarget.video.audio as audio_module

    source, calls = _two_tracks(tmp_path), []
    probe = audio_module.probe_video
    monkeypatch.setattr(audio_module, "probe_video", lambda path: calls.append(path) or probe(path))
    with av.open(str(tmp_path / "out.mkv"), "w") as out:
        muxers = audio_module.audio_muxers(out, AudioSource(source))
        assert len(muxers) == 2 and len(calls) == 1  # a probe reads the whole file
        for muxer in muxers:
            muxer.close()


def test_audio_range_reencoded_is_cut_to_the_sample(tmp_path):
    source = make_video(tmp_path / "a.mp4", 60, audio="aac")
    out = tmp_path / "cut.mp4"
    reader = VideoReader(source)
    with VideoWriter(out, reader.info.frame_rate, settings=FAST,
                     audio=AudioSource(source, 0.5, 1.5, reencode=True)) as writer:
        for chunk in reader.iter_chunks(8, 0.5, 1.5):
            writer.write(chunk.frames)
    info = probe_video(out)
    assert info.audio.codec == "aac"
    assert info.audio.duration == pytest.approx(1.0, abs=1100 / 44100)  # encoder padding only


def test_variable_frame_rate_timestamps_preserved(tmp_path):
    tb = Fraction(1, 90000)
    steps = [3003, 6006, 1501, 4504, 3003, 9009, 3003, 2002, 3003]
    pts = np.concatenate([[0], np.cumsum(steps)]).tolist()
    source = make_video(tmp_path / "vfr.mp4", len(pts), audio="aac", pts=pts, time_base=tb)
    out = transcode(source, tmp_path / "out.mp4", vfr=True)
    assert video_pts_seconds(out) == [Fraction(p, 90000) for p in pts]
    info = probe_video(out)
    assert info.is_vfr and info.frame_count == len(pts)
    assert audio_packets(out) == audio_packets(source)


@pytest.mark.parametrize(("mode", "size"), [("pad", (642, 360)), ("crop", (640, 358))])
def test_odd_size_is_padded_or_cropped_by_one_pixel(tmp_path, mode, size):
    source = make_video(tmp_path / "odd.mkv", 4, 641, 359, audio=None, pix_fmt="yuv444p")
    assert (probe_video(source).width, probe_video(source).height) == (641, 359)
    settings = EncoderSettings(preset="ultrafast", odd_size=mode)
    assert encoded_size(641, 359, settings) == size
    out = transcode(source, tmp_path / f"{mode}.mp4", settings=settings, audio=False)
    info = probe_video(out)
    assert (info.width, info.height) == size
    frames = next(VideoReader(out).iter_chunks(4)).frames
    assert [read_code(f[:359, :641]) for f in frames] == [0, 1, 2, 3]
    if mode == "pad":  # the added column/row repeat the last ones
        assert np.abs(frames[0][:, 641].astype(int) - frames[0][:, 640].astype(int)).mean() < 4
        assert np.abs(frames[0][359].astype(int) - frames[0][358].astype(int)).mean() < 4


def test_failure_leaves_no_output_and_keeps_previous_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, 25, settings=FAST) as writer:
            for k in range(5):
                writer.write(code_frame(k, 64, 48))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 25, settings=FAST) as writer:
            writer.write(code_frame(0, 64, 48))
            raise RuntimeError("second failure")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_writer_rejects_bad_frames_and_timestamps(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "a.mp4", 25, settings=FAST) as writer:
            writer.write(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="increase"):
        with VideoWriter(tmp_path / "b.mp4", 25, settings=FAST, time_base=Fraction(1, 1000)) as writer:
            writer.write(np.zeros((2, 16, 16, 3), np.uint8), [0, 0])
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "c.mp4", 25).close()
    assert list(tmp_path.iterdir()) == []


def test_crf_and_preset_reach_the_encoder(tmp_path):
    frame = (np.random.default_rng(0).integers(0, 255, (64, 64, 3))).astype(np.uint8)
    sizes = {}
    for crf in (0, 35):
        path = tmp_path / f"crf{crf}.mp4"
        with VideoWriter(path, 25, settings=EncoderSettings(crf=crf, preset="ultrafast")) as writer:
            writer.write(np.stack([frame] * 3))
        sizes[crf] = path.stat().st_size
    assert sizes[0] > 2 * sizes[35]
    settings = EncoderSettings(crf=20, preset="slow", options={"tune": "film"})
    assert settings.codec_options() == {"crf": "20", "preset": "slow", "tune": "film"}


@pytest.mark.parametrize("settings, message", [
    (dict(preset="warp"), "libx264 refused the encoder settings (crf 18, preset warp, pixel format yuv420p): "
                          "invalid preset 'warp'"),
    (dict(pix_fmt="rgb24"), "libx264 does not encode pixel format 'rgb24' (it takes yuv420p"),
    (dict(pix_fmt="foo"), "unknown pixel format 'foo'"),
    (dict(crf=-5), "crf must be from 0 to 51 for libx264, got -5"),
    (dict(crf=52), "crf must be from 0 to 51 for libx264, got 52"),
    (dict(codec="libvpx-vp9", crf=64), "crf must be from 0 to 63 for libvpx-vp9, got 64"),
    (dict(codec="aac"), "'aac' is not a video encoder"),
])
def test_settings_the_encoder_refuses_fail_when_made(settings, message, capfd):
    """Checked when the settings are made (the encoder opened on a small picture), not at the first chunk; the
    encoder's own complaint is in the message and not on the process's stderr."""
    with pytest.raises(ValueError) as raised:
        EncoderSettings(**settings)
    assert str(raised.value).startswith(message)
    assert capfd.readouterr().err == ""
    for good in (dict(crf=0), dict(crf=51, preset="ultrafast"), dict(pix_fmt="yuv444p"),
                 dict(codec="libvpx-vp9", crf=63)):
        EncoderSettings(**good)


def test_x265_writes_nothing_on_the_process_stderr(tmp_path, capfd):
    """libx265 prints a dozen info lines per encoder and "encoded N frames" when one closes, also for the encoder
    that checks the settings; it is told to report errors only (user options still win)."""
    capfd.readouterr()
    settings = EncoderSettings(codec="libx265", preset="ultrafast")
    with VideoWriter(tmp_path / "a.mp4", 25, settings=settings) as writer:
        writer.write(np.stack([code_frame(k, 64, 48) for k in range(3)]))
    assert capfd.readouterr().err == ""
    assert probe_video(tmp_path / "a.mp4").frame_count == 3
    assert settings.codec_options()["x265-params"] == "log-level=error"
    mine = EncoderSettings(codec="libx265", preset="ultrafast", options={"x265-params": "log-level=info"})
    assert mine.codec_options()["x265-params"] == "log-level=info"
