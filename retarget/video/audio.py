"""Carrying a source file's audio into an output container, in step with the video being written.

Every audio stream is carried (:func:`audio_muxers`), each copied packet for packet (bytes unchanged) when the
output container accepts its codec in a form players read (not Vorbis in MP4 or MOV, see :data:`NOT_COPIED`), and
re-encoded otherwise (AAC when the container takes it, else the container's default audio codec, e.g. Opus for
WebM). A time range selects the packets that overlap it; copied packets keep their size, so a range is exact to one
audio packet (1024 samples, about 23 ms, for AAC at 44.1 kHz), while re-encoded audio is cut to the sample.

Timing contract: output time 0 is the source video's first frame plus ``start``; audio keeps its offset to the
video, so lip sync is preserved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retarget.errors import InputError
from retarget.video.probe import VideoInfo, _reason, open_input, probe_video


#: Codecs the muxer of an output format (FFmpeg's name) accepts but players do not read there, so they are
#: re-encoded: Vorbis in MP4/MOV has only a private object type (FFmpeg reads it; browsers and QuickTime do not).
NOT_COPIED = {"mp4": {"vorbis"}, "mov": {"vorbis"}}


def copyable(output: av.container.OutputContainer, codec: str) -> bool:
    """Whether audio in ``codec`` can be copied into ``output`` as it is (see :data:`NOT_COPIED`)."""
    names = output.format.name.split(",")
    return codec in output.supported_codecs and not any(codec in NOT_COPIED.get(name, ()) for name in names)


@dataclass(frozen=True)
class AudioSource:
    """The audio of ``path`` between ``start`` and ``end`` seconds (from the file's first video frame; ``None`` =
    open end) to put in an output. ``reencode`` forces re-encoding even where copying is possible."""

    path: Path
    start: float | None = None
    end: float | None = None
    reencode: bool = False

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"audio range end {self.end} must be after start {self.start}")


class AudioMuxer:
    """Adds one audio stream of a source (``index``: its number among the file's audio streams) to ``output`` and
    writes its packets as the video advances; :func:`audio_muxers` makes one for each.

    Call :meth:`write_until` with the output time (seconds) the video has reached, and :meth:`finish` after the
    last video frame. Nothing is created when the source has no such audio stream (``has_audio`` is False). The
    stream's language tag is kept. ``info``: the source's probe, when the caller has it (a probe reads the whole
    file). ``stream_count``: how many audio streams the source has.
    """

    def __init__(self, output: av.container.OutputContainer, source: AudioSource, index: int = 0,
                 info: VideoInfo | None = None):
        self.source = source
        info = info if info is not None else probe_video(source.path)
        self.has_audio = info.audio is not None
        self.copied = False
        self.stream_count = 0
        self._input = None
        if self.has_audio:
            self._input = open_input(source.path)
            self.stream_count = len(self._input.streams.audio)
            if index >= self.stream_count:
                self.close()
                self.has_audio = False
        if not self.has_audio:
            return
        in_stream = self._input.streams.audio[index]
        self._in_stream = in_stream
        self._in_tb = Fraction(in_stream.time_base)
        video_start = Fraction(int(info.start_pts)) * info.time_base
        self._origin = video_start + Fraction(source.start or 0)  # source time that becomes output time 0
        self._stop = None if source.end is None else video_start + Fraction(source.end)
        codec = in_stream.codec_context.name
        self.copied = (not source.reencode) and copyable(output, codec)
        if self.copied:
            self.stream = output.add_stream_from_template(in_stream)
            layout = _named_layout(in_stream.codec_context)
            if layout is not None:
                self.stream.codec_context.layout = layout
            self._items = self._copy_packets()
        else:
            self.stream = self._add_encoder(output, in_stream)
            self._items = self._encode_packets()
        if self.copied:
            self.stream.time_base = in_stream.time_base
        else:
            self.stream.time_base = Fraction(1, self.stream.codec_context.sample_rate)
        language = in_stream.metadata.get("language")
        if language and language != "und":
            self.stream.metadata["language"] = language
        self._output = output
        self._pending: av.Packet | None = None
        self._done = False

    @staticmethod
    def _add_encoder(output: av.container.OutputContainer, in_stream) -> av.audio.stream.AudioStream:
        name = "aac" if "aac" in output.supported_codecs else output.default_audio_codec
        codec = av.Codec(name, "w")
        rate = in_stream.codec_context.sample_rate
        rates = codec.audio_rates
        if rates and rate not in rates:
            rate = 48000 if 48000 in rates else max(rates)
        stream = output.add_stream(name, rate=rate)
        stream.layout = _named_layout(in_stream.codec_context) or (
            in_stream.codec_context.layout.name if in_stream.codec_context.layout else "stereo")
        return stream

    def _in_range(self, start: Fraction, end: Fraction) -> bool:
        return end > self._origin and (self._stop is None or start < self._stop)

    def _copy_packets(self) -> Iterator[tuple[Fraction, av.Packet]]:
        offset = round(self._origin / self._in_tb)
        for packet in self._demux():
            start = packet.pts * self._in_tb
            end = (packet.pts + (packet.duration or 0)) * self._in_tb
            if self._stop is not None and start >= self._stop:
                return
            whole = self.source.start is None and self.source.end is None  # keep priming packets too
            if not whole and not self._in_range(start, end if end > start else start + self._in_tb):
                continue
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            yield start - self._origin, packet

    def _demux(self) -> Iterator[av.Packet]:
        try:
            for packet in self._input.demux(self._in_stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                yield packet
        except av.error.FFmpegError as error:
            raise InputError(f"{self.source.path}: damaged audio stream ({_reason(error)})") from error

    def _encode_packets(self) -> Iterator[tuple[Fraction, av.Packet]]:
        rate = self.stream.codec_context.sample_rate
        in_rate = self._in_stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=self.stream.layout.name, rate=rate)
        encoder_tb = Fraction(1, rate)
        first_sample = int(round(self._origin * in_rate))
        stop_sample = None if self._stop is None else int(round(self._stop * in_rate))
        next_pts = 0

        def encode(frame: av.AudioFrame | None) -> Iterator[tuple[Fraction, av.Packet]]:
            # Resample (None flushes the resampler) and encode with contiguous sample timestamps.
            nonlocal next_pts
            for converted in resampler.resample(frame):
                converted.pts = next_pts
                converted.time_base = encoder_tb
                next_pts += converted.samples
                for out_packet in self.stream.encode(converted):
                    yield out_packet.pts * encoder_tb, out_packet

        for packet in self._demux():
            try:
                decoded = self._in_stream.decode(packet)
            except av.error.FFmpegError as error:
                raise InputError(f"{self.source.path}: damaged audio stream ({_reason(error)})") from error
            for frame in decoded:
                begin = int(round(frame.pts * self._in_tb * in_rate)) if frame.pts is not None else first_sample
                count = frame.samples
                lo = max(0, first_sample - begin)
                hi = count if stop_sample is None else min(count, stop_sample - begin)
                if hi <= lo:
                    if stop_sample is not None and begin >= stop_sample:
                        break
                    continue
                yield from encode(frame if (lo, hi) == (0, count) else _slice_frame(frame, lo, hi))
        yield from encode(None)
        for out_packet in self.stream.encode(None):
            yield (out_packet.pts or 0) * encoder_tb, out_packet

    def write_until(self, seconds: float | Fraction) -> None:
        """Mux the audio packets that start before output time ``seconds``."""
        if not self.has_audio or self._done:
            return
        limit = Fraction(seconds)
        while True:
            if self._pending is None:
                item = next(self._items, None)
                if item is None:
                    self._done = True
                    return
                self._pending_time, self._pending = item
            if self._pending_time >= limit:
                return
            self._mux(self._pending)
            self._pending = None

    def _mux(self, packet: av.Packet) -> None:
        packet.stream = self.stream
        self._output.mux(packet)

    def finish(self) -> None:
        """Mux every remaining packet of the range and close the source."""
        if not self.has_audio:
            return
        if not self._done:
            if self._pending is not None:
                self._mux(self._pending)
                self._pending = None
            for _, packet in self._items:
                self._mux(packet)
            self._done = True
        self.close()

    def close(self) -> None:
        """Close the source file (idempotent)."""
        if self._input is not None:
            self._input.close()
            self._input = None


def audio_muxers(output: av.container.OutputContainer, source: AudioSource) -> list[AudioMuxer]:
    """One :class:`AudioMuxer` for each audio stream of ``source``'s file, in the file's order (a camera's or a
    recorder's separate microphone tracks, a film's languages), so none is lost; none for a file without audio."""
    info = probe_video(source.path)  # once for every stream
    first = AudioMuxer(output, source, info=info)
    if not first.has_audio:
        return []
    return [first, *(AudioMuxer(output, source, index, info) for index in range(1, first.stream_count))]


# FFmpeg's default layout for a channel count (``av_channel_layout_default``).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _named_layout(codec_context) -> str | None:
    """The default layout name for an audio stream whose channels are counted but not named, else None.

    AVI and WAV audio without a channel mask reads as e.g. ``"2 channels"``; the MP4 muxer refuses to write PCM in
    such a layout (``unsupported channel layout``, when the file is closed), so the output stream is given the
    layout FFmpeg assumes for that many channels. The samples are unchanged.
    """
    layout = codec_context.layout
    channels = len(layout.channels) if layout is not None else 0
    if layout is None or layout.name != f"{channels} channels":
        return None
    return _DEFAULT_LAYOUTS.get(channels)


def _slice_frame(frame: av.AudioFrame, lo: int, hi: int) -> av.AudioFrame:
    """A copy of ``frame`` holding samples ``[lo, hi)``."""
    samples = frame.to_ndarray()
    fmt = frame.format
    if fmt.is_planar:
        part = np.ascontiguousarray(samples[:, lo:hi])
    else:
        channels = len(frame.layout.channels)
        part = np.ascontiguousarray(samples.reshape(-1, channels)[lo:hi].reshape(1, -1))
    sliced = av.AudioFrame.from_ndarray(part, format=fmt.name, layout=frame.layout.name)
    sliced.sample_rate = frame.sample_rate
    sliced.pts = None
    return sliced
