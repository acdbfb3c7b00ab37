"""Resumable rendering: finished chunks of encoded frames in a work folder beside the output.

A render of N frames is cut into chunks of ``chunk_size`` frames. Each finished chunk is encoded right away
(same encoder settings as the final file, each chunk starting on a keyframe) into
``OUT.mp4.retarget-work/chunk_000007.mp4``, written atomically, and recorded in ``manifest.json`` (also written
atomically). The manifest is keyed by a SHA-256 of the job (the caller's settings and input identities, the frame
count, chunk size, rate, timestamps and encoder settings): a rerun of the same job renders only the chunks not yet
on disk; a changed job discards the old chunks. :meth:`ChunkedRender.finalize` joins the chunks without
re-encoding (packets are copied, timestamps offset), adds the audio, writes the output atomically and removes the
work folder. Disk use is about the size of the final file. The work folder is locked while a ChunkedRender
holds it (see :mod:`retarget.video.work_lock`): a second process rendering the same output fails at once instead
of discarding the first one's chunks.

Usage::

    job = ChunkedRender(out, {"identity": file_identity(photo), "seed": 7, ...}, info.frame_count, 16,
                        info.frame_rate)
    for span in job.pending_chunks():
        job.save_chunk(span.index, render(span.start, span.stop))   # uint8 [span.stop - span.start, H, W, 3]
    job.finalize(audio=AudioSource(driving))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from retarget.video.atomic import atomic_output, commit, discard, discard_partials, partial_path
from retarget.video.audio import AudioSource, audio_muxers
from retarget.video.encoding import EncoderSettings, apple_codec_tag
from retarget.video.work_lock import FolderLock
from retarget.video.writer import VideoWriter

log = logging.getLogger(__name__)

WORK_SUFFIX = ".retarget-work"
MANIFEST = "manifest.json"
_MANIFEST_FORMAT = "retarget-render-work"
_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ChunkSpan:
    """Chunk ``index`` covers frames ``[start, stop)`` of the output."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def file_identity(path: str | os.PathLike, sample_bytes: int = 1 << 20) -> dict:
    """A cheap fingerprint of an input file for job keys: name, size, and SHA-256 of its first and last
    ``sample_bytes`` (a changed input changes the key without hashing gigabytes)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(sample_bytes))
        if size > sample_bytes:
            handle.seek(max(sample_bytes, size - sample_bytes))
            digest.update(handle.read(sample_bytes))
    return {"name": path.name, "size": size, "sha256_ends": digest.hexdigest()}


def with_reading(job_key: dict, pixel_aspect: Fraction = Fraction(1), interlaced: bool = False) -> dict:
    """``job_key`` with what the reader does to an input clip's pictures, where earlier versions read them as
    stored: its pixel aspect when it is not 1 (anamorphic pixels, resampled to square ones) and ``"deinterlace":
    "bwdif"`` for an interlaced clip. The keys of other clips stay those of earlier versions, so their renders
    resume."""
    pixel_aspect = Fraction(pixel_aspect)
    if pixel_aspect != 1:
        job_key["pixel_aspect"] = [pixel_aspect.numerator, pixel_aspect.denominator]
    if interlaced:
        job_key["deinterlace"] = "bwdif"
    return job_key


def job_digest(job_key: Mapping) -> str:
    """SHA-256 (hex) of a job key (the settings and input identities a render depends on, as given to
    :class:`ChunkedRender`): two renders with the same digest are the same job. Rendered videos carry it in their
    provenance record (``settings.job_digest``), so ``batch`` can tell a finished output of the same job from one
    of another."""
    return hashlib.sha256(json.dumps(job_key, sort_keys=True, default=str).encode()).hexdigest()


def work_folder(out_path: str | os.PathLike) -> Path:
    """The work folder of the output ``out_path``: ``OUT.mp4.retarget-work`` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + WORK_SUFFIX)


def kept_frames(out_path: str | os.PathLike) -> int:
    """How many rendered frames the work folder of ``out_path`` keeps for a resume (the frames of the chunks its
    manifest records; 0 without a folder or a readable manifest). Read without the lock: for a message only."""
    try:
        manifest = json.loads((work_folder(out_path) / MANIFEST).read_text())
        return sum(int(entry["frames"]) for entry in manifest["chunks"].values())
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 0


def output_lock(out_path: str | os.PathLike) -> FolderLock:
    """Lock ``out_path``'s work folder now (see :mod:`retarget.video.work_lock`), for a job to hold from its start
    (before the face scan) until its output is complete; a :class:`ChunkedRender` of the same output made by the
    same process shares the lock. Use as a context manager. Raises InputError when another process holds it."""
    return FolderLock(work_folder(out_path), str(out_path))


class ChunkedRender:
    """The chunks of one render job and their on-disk state (see module doc).

    ``out_path``: the final video. ``job_key``: JSON-serialisable settings and input identities that determine
    the pixels. ``total_frames``/``chunk_size``: frame counts. ``rate``: exact frame rate. ``time_base`` and
    ``pts`` (int ``[total_frames]``, increasing): the timestamps to keep for variable-rate output; default
    frame k at k / rate. ``settings``: encoder settings for chunks and therefore for the output.
    """

    def __init__(
        self,
        out_path: str | os.PathLike,
        job_key: Mapping,
        total_frames: int,
        chunk_size: int,
        rate: Fraction | int,
        *,
        settings: EncoderSettings | None = None,
        time_base: Fraction | None = None,
        pts: Sequence[int] | np.ndarray | None = None,
    ):
        if total_frames < 1 or chunk_size < 1:
            raise ValueError("total_frames and chunk_size must be >= 1")
        self.out_path = Path(out_path)
        self.work_dir = work_folder(self.out_path)
        self.total_frames = int(total_frames)
        self.chunk_size = int(chunk_size)
        self.rate = Fraction(rate)
        self.settings = settings or EncoderSettings()
        self.time_base = Fraction(time_base) if time_base is not None else 1 / self.rate
        if pts is None:
            if time_base is not None and self.time_base != 1 / self.rate:
                raise ValueError("pts are required with a time_base other than 1 / rate")
            self.pts = np.arange(self.total_frames, dtype=np.int64)
        else:
            self.pts = np.asarray(pts, dtype=np.int64)
            if self.pts.shape != (self.total_frames,) or np.any(np.diff(self.pts) <= 0):
                raise ValueError(f"pts must be {self.total_frames} increasing integers")
        self.key = self._hash(job_key)
        self._lock = FolderLock(self.work_dir, str(self.out_path))  # before anything in the folder is touched
        try:
            self._manifest = self._load_or_reset()
            discard_partials(self.out_path)  # an earlier job's output being joined when it was killed
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the work folder's lock (removing the folder if nothing was saved in it); the chunks stay for a
        later resume. :meth:`finalize` closes; so does leaving a ``with`` block or dropping the object."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "ChunkedRender":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the operating system drops the lock anyway
            pass

    def _hash(self, job_key: Mapping) -> str:
        payload = {
            "job": job_key,
            "total_frames": self.total_frames,
            "chunk_size": self.chunk_size,
            "rate": [self.rate.numerator, self.rate.denominator],
            "time_base": [self.time_base.numerator, self.time_base.denominator],
            "pts_sha256": hashlib.sha256(self.pts.astype("<i8").tobytes()).hexdigest(),
            "encoder": self.settings.as_dict(),
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def chunk_count(self) -> int:
        return -(-self.total_frames // self.chunk_size)

    def span(self, index: int) -> ChunkSpan:
        """Frames of chunk ``index``."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} is outside 0..{self.chunk_count - 1}")
        start = index * self.chunk_size
        return ChunkSpan(index, start, min(start + self.chunk_size, self.total_frames))

    def _chunk_path(self, index: int) -> Path:
        """Chunk files are MP4 (MOV for a .mov output): their packets carry decode timestamps, which joining
        needs; Matroska stores none for B-frames, so a .mkv output is joined from MP4 chunks."""
        suffix = ".mov" if self.out_path.suffix.lower() == ".mov" else ".mp4"
        return self.work_dir / f"chunk_{index:06d}{suffix}"

    def _fresh_manifest(self) -> dict:
        return {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "key": self.key, "size": None,
                "chunks": {}}

    def _load_or_reset(self) -> dict:
        manifest_path = self.work_dir / MANIFEST
        manifest = None
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                manifest = None
        usable = (
            isinstance(manifest, dict)
            and manifest.get("format") == _MANIFEST_FORMAT
            and manifest.get("version") == _MANIFEST_VERSION
            and manifest.get("key") == self.key
            and isinstance(manifest.get("chunks"), dict)
        )
        if not usable:
            kept = sorted(self.work_dir.glob("chunk_*")) if self.work_dir.is_dir() else []
            if kept:  # said, so that a changed option does not silently cost the frames rendered before
                log.warning("%s: the %d rendered chunk(s) kept in %s were made with other settings or inputs; "
                            "rendering from the start", self.out_path.name, len(kept), self.work_dir)
            self._clear_work_dir()
            return self._fresh_manifest()
        chunks = {}
        for name, entry in manifest["chunks"].items():
            path = self._chunk_path(int(name))
            if path.is_file() and path.stat().st_size == entry.get("bytes"):
                chunks[name] = entry
        manifest["chunks"] = chunks
        for stray in self.work_dir.glob(".*.partial-*"):
            discard(stray)
        if chunks:
            done = sum(len(self.span(int(name))) for name in chunks if int(name) < self.chunk_count)
            log.info("%s: resuming: %d of %d frame(s) already rendered (kept in %s)", self.out_path.name, done,
                     self.total_frames, self.work_dir)
        return manifest

    def _clear_work_dir(self) -> None:
        if self.work_dir.is_dir():
            for item in self.work_dir.iterdir():
                ours = item.name == MANIFEST or item.name.startswith("chunk_") or ".partial-" in item.name
                if item.is_file() and ours:
                    discard(item)

    def _write_manifest(self) -> None:
        with atomic_output(self.work_dir / MANIFEST) as temporary:
            temporary.write_text(json.dumps(self._manifest, indent=1, sort_keys=True))

    def is_done(self, index: int) -> bool:
        """True when chunk ``index`` is on disk for this job."""
        return str(index) in self._manifest["chunks"]

    def pending_chunks(self) -> list[ChunkSpan]:
        """The chunks still to render, in order."""
        return [self.span(i) for i in range(self.chunk_count) if not self.is_done(i)]

    def done_frames(self) -> int:
        """Number of frames already rendered (for progress bars)."""
        return sum(len(self.span(int(i))) for i in self._manifest["chunks"])

    def save_chunk(self, index: int, frames: np.ndarray, *, watermark: bool = False) -> None:
        """Encode and store chunk ``index``: uint8 RGB ``[len(span), H, W, 3]``, the same H, W for every chunk.

        ``watermark``: embed the invisible provenance mark (:mod:`retarget.provenance.watermark`) in every frame
        before encoding; the job key must then include this setting, so that resumed chunks agree.
        """
        span = self.span(index)
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] != len(span):
            raise ValueError(f"chunk {index} needs {len(span)} frames [n, H, W, 3], got {frames.shape}")
        if watermark:
            from retarget.provenance.watermark import embed_frames

            frames = embed_frames(frames)
        size = [int(frames.shape[2]), int(frames.shape[1])]
        if self._manifest["size"] is not None and self._manifest["size"] != size:
            raise ValueError(f"chunk {index} is {size[0]}x{size[1]}, earlier chunks are "
                             f"{self._manifest['size'][0]}x{self._manifest['size'][1]}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self._chunk_path(index)
        with VideoWriter(path, self.rate, settings=self.settings, time_base=self.time_base) as writer:
            writer.write(frames, self.pts[span.start : span.stop])
        self._manifest["size"] = size
        self._manifest["chunks"][str(index)] = {"frames": len(span), "bytes": path.stat().st_size}
        self._write_manifest()

    def finalize(self, audio: AudioSource | None = None, progress: bool = True,
                 metadata: Mapping[str, str] | None = None, timecode: str | None = None) -> Path:
        """Join all chunks into ``out_path`` (atomically, with ``audio`` if given, and the container ``metadata``
        tags, e.g. :func:`retarget.provenance.metadata.container_tags`) and delete the work folder. ``timecode``:
        the first frame's SMPTE timecode (a timecode track in MP4/MOV, a tag in Matroska), or None for none.

        Raises ``RuntimeError`` if chunks are missing.
        """
        missing = [span.index for span in self.pending_chunks()]
        if missing:
            raise RuntimeError(f"{self.out_path}: cannot finalize, {len(missing)} chunk(s) not rendered "
                               f"(first: {missing[0]})")
        temporary = partial_path(self.out_path)
        try:
            self._concatenate(temporary, audio, progress, metadata, timecode)
            commit(temporary, self.out_path)
        except BaseException:
            discard(temporary)
            raise
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.close()
        return self.out_path

    def _concatenate(self, target: Path, audio: AudioSource | None, progress: bool,
                     metadata: Mapping[str, str] | None = None, timecode: str | None = None) -> None:
        output = av.open(str(target), mode="w")
        output.metadata.update({str(key): str(value) for key, value in (metadata or {}).items()})
        muxers = []  # one per audio stream of the source
        try:
            first = av.open(str(self._chunk_path(0)))
            template = first.streams.video[0]
            out_stream = output.add_stream_from_template(template)
            # The nominal rate (a Matroska muxer writes it as the default frame duration; without it readers guess
            # the rate from the millisecond timestamps: 1000/33 for 30 fps, 1000/1 for variable-rate video)
            out_stream.codec_context.framerate = Fraction(self.rate)
            tag = apple_codec_tag(template.codec_context.name, self.out_path.suffix)
            if tag is not None:  # the muxer would write its own default tag for a copied stream
                out_stream.codec_context.codec_tag = tag
            if timecode is not None:  # a timecode track in MP4/MOV (PyAV 18 or newer), a tag in Matroska
                out_stream.metadata["timecode"] = timecode
            chunk_tb = Fraction(template.time_base)
            extradata = template.codec_context.extradata
            first.close()
            out_stream.time_base = chunk_tb
            if audio is not None:
                muxers = audio_muxers(output, audio)
            last_dts = None
            delay = None  # chunk 0's decoding delay (B-frames), in chunk_tb ticks
            from tqdm.auto import tqdm  # looked up now: a front end may have put its own bar class there

            bar = tqdm(total=self.total_frames, desc=f"joining {self.out_path.name}", unit="frame",
                       disable=not progress, leave=False)
            for index in range(self.chunk_count):
                span = self.span(index)
                offset_seconds = (int(self.pts[span.start]) - int(self.pts[0])) * self.time_base
                offset = round(offset_seconds / chunk_tb)
                chunk = av.open(str(self._chunk_path(index)))
                try:
                    stream = chunk.streams.video[0]
                    if Fraction(stream.time_base) != chunk_tb or stream.codec_context.extradata != extradata:
                        raise RuntimeError(f"{self._chunk_path(index)}: chunk was encoded differently from chunk 0")
                    count = 0
                    shift = None
                    for packet in chunk.demux(stream):
                        if packet.size == 0 or packet.pts is None:
                            continue
                        if packet.dts is None:
                            packet.dts = packet.pts
                        if shift is None:  # the first packet in decode order starts the chunk: its delay is
                            chunk_delay = -packet.dts  # how far its decoding runs ahead of its first frame
                            delay = chunk_delay if delay is None else delay
                            # A chunk with fewer frames than the encoder's B-frame delay (a short last chunk) is
                            # decoded with less delay: move its decode times back by the difference, so that
                            # they stay one frame apart across the join (presentation times are unchanged).
                            shift = max(0, delay - chunk_delay)
                        packet.pts += offset
                        packet.dts += offset - shift
                        if last_dts is not None and packet.dts <= last_dts:
                            packet.dts = last_dts + 1
                        if packet.dts > packet.pts:
                            raise RuntimeError(f"{self._chunk_path(index)}: cannot join chunk timestamps")
                        last_dts = packet.dts
                        packet.stream = out_stream
                        output.mux(packet)
                        for muxer in muxers:
                            muxer.write_until(packet.dts * chunk_tb)
                        count += 1
                    if count != len(span):
                        raise RuntimeError(f"{self._chunk_path(index)}: holds {count} frames, expected {len(span)}")
                finally:
                    chunk.close()
                bar.update(len(span))
            bar.close()
            for muxer in muxers:
                muxer.finish()
        finally:
            for muxer in muxers:
                muxer.close()
            output.close()
