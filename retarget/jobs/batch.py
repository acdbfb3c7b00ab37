"""``retarget batch``: every video of a folder through ``run`` or ``edit``.

Contract: outputs go to ``OUT_DIR/<input stem>.mp4`` (inputs sharing a stem, such as ``a.mp4`` and ``a.mov``, get
``a.mp4.mp4`` and ``a.mov.mp4``, see :func:`output_names`); ``OUT_DIR`` must not be the input folder or inside
it. An output that already exists is finished (outputs appear atomically, so a file there is complete) and is
skipped, unless its provenance record says another job made it (other inputs or settings, see
:func:`rendered_by_another_job`): then it is rendered again and replaced. A file that fails is appended to
``OUT_DIR/failures.jsonl`` (one JSON object per line: ``file``, ``error``, ``type``, ``time``) and the others go
on. The model is loaded once per process and shared by every
file.

Sharding: under ``accelerate launch``, ``torchrun`` or ``mpirun`` the sorted file list is split by the launcher's
global rank (:func:`process_share`): process ``i`` of ``n`` takes files ``i, i + n, i + 2n, ...``, so no file
is done twice and each has exactly one owner. Each process renders on its own GPU (the launcher's local rank, see
:func:`retarget.devices.resolve_device`). The model files are loaded once and checked before any clip (the diffusion
pipeline's load, on its own thread during the first clip's scan, stops the batch if it fails): bad weights stop the
batch with one error instead of failing every clip. On CUDA each clip is scanned while the one before renders (see
:func:`batch_job`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from retarget.errors import InputError, OutputBusyError
from retarget.jobs.common import write_problem, write_reason
from retarget.jobs.options import JobOptions
from retarget.jobs.scanned import ScannedClip
from retarget.jobs.stage_times import StageTimes, finish_job
from retarget.video.resume import job_digest

log = logging.getLogger(__name__)

#: What ``batch`` takes as a video, by file extension (any case): the common containers, camcorder MPEG-TS
#: (AVCHD ``.mts``/``.m2ts``), phone ``.3gp``, broadcast ``.mxf`` and Ogg ``.ogv``.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                  ".wmv", ".3gp", ".mxf", ".ogv")
FAILURES_NAME = "failures.jsonl"


@dataclass(frozen=True)
class BatchTarget:
    """What to do with each video: ``identity`` (a photo, ``run``) or ``expression`` (a source, ``edit``);
    ``reference`` and ``paste_back`` (run only) and ``side_by_side`` (input | result) as for those commands."""

    identity: str | None = None
    expression: str | None = None
    reference: bool = True
    side_by_side: bool = False
    paste_back: bool = False

    def __post_init__(self):
        if (self.identity is None) == (self.expression is None):
            raise InputError("batch needs exactly one of --identity PHOTO or --expression SOURCE")
        if self.paste_back and self.identity is None:
            raise InputError("--paste-back is for --identity (run); edit always pastes back")
        if not self.reference and self.identity is None:
            raise InputError("--no-reference is for --identity (run); edit always uses the Reference Adapter")


@dataclass
class BatchReport:
    """Counts of this process's share: ``done`` rendered now, ``skipped`` already finished, ``busy`` being rendered
    by another process (its output locked: two batches on one folder), ``failed``."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    busy: int = 0

    def summary(self) -> str:
        """One line for the user, e.g. ``3 clip(s): 1 rendered, 1 already finished, 1 failed`` (and ``N left to
        another process rendering them`` when there are such)."""
        total = self.done + self.skipped + self.failed + self.busy
        busy = f", {self.busy} left to another process rendering them" if self.busy else ""
        return (f"{total} clip(s): {self.done} rendered, {self.skipped} already finished{busy}, "
                f"{self.failed} failed")


def list_videos(folder: Path) -> list[Path]:
    """Video files directly in ``folder`` (by extension, hidden files excluded), sorted by name. Entries with a
    video extension that are not files (a link to a missing file, a pipe, a folder) are left out with a warning."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {'is a file, not a folder of videos' if folder.exists() else 'no such folder'}")
    videos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in VIDEO_SUFFIXES or path.name.startswith("."):
            continue
        if path.is_file():
            videos.append(path)
        else:
            what = "a link to a missing file" if path.is_symlink() and not path.exists() else \
                "a folder" if path.is_dir() else "not a regular file"
            log.warning("%s: skipped (%s)", path, what)
    return videos


#: (rank, size) environment variables of MPI launchers (Open MPI, MVAPICH2, MPICH and Intel MPI), first found wins.
MPI_RANK_VARIABLES = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
                      ("PMI_RANK", "PMI_SIZE"))


def process_share() -> tuple[int, int]:
    """(index, count) of this process among the launched ones, else (0, 1).

    ``accelerate launch`` and ``torchrun`` set the standard ``RANK``/``WORLD_SIZE`` variables (global over all
    nodes); MPI launchers set their own (:data:`MPI_RANK_VARIABLES`), read directly (accelerate reads those only
    for CPU runs). No process group is started: the split needs no communication.
    A launcher's pair that cannot be right (a rank that is not below the size, or not a number) raises
    :class:`InputError` rather than letting this process render every file.
    """
    pairs = (("RANK", "WORLD_SIZE"),) + MPI_RANK_VARIABLES
    for rank_name, size_name in pairs:
        size, rank = os.environ.get(size_name, "").strip(), os.environ.get(rank_name, "").strip()
        if size.isdigit() and int(size) > 1:
            if not rank.isdigit() or int(rank) >= int(size):
                raise InputError(f"{rank_name}={rank or '(unset)'} is not a process of {size_name}={size} (0 to "
                                 f"{int(size) - 1}): check the launcher's settings")
            return int(rank), int(size)
    return 0, 1


def shard(files: list[Path], index: int, count: int) -> list[Path]:
    """The files process ``index`` of ``count`` owns (round robin over the sorted list)."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} out of range for {count} processes")
    return files[index::count]


def output_names(videos: list[Path]) -> dict[Path, str]:
    """The output file name of each of ``videos`` (the whole sorted list of the input folder), all distinct.

    A video whose stem no other video shares gets ``<stem>.mp4``; videos sharing a stem (compared without case,
    for case-insensitive file systems) get ``<name>.mp4`` with their own extension kept (``a.mov`` ->
    ``a.mov.mp4``, ``a.mp4`` -> ``a.mp4.mp4``); a name still taken gets ``-2``, ``-3``, ... before ``.mp4``
    (first come in sorted order). The names depend only on the list, so every process of a launch and every
    rerun on the same folder agree on them.
    """
    stems: dict[str, int] = {}
    for video in videos:
        stems[video.stem.casefold()] = stems.get(video.stem.casefold(), 0) + 1
    wanted = {v: (v.stem if stems[v.stem.casefold()] == 1 else v.name) for v in videos}
    taken = {base.casefold() + ".mp4" for v, base in wanted.items() if stems[v.stem.casefold()] == 1}
    names = {}
    for video in videos:
        base = wanted[video]
        name = f"{base}.mp4"
        if stems[video.stem.casefold()] > 1:
            number = 2
            while name.casefold() in taken:
                name, number = f"{base}-{number}.mp4", number + 1
            taken.add(name.casefold())
        names[video] = name
    return names


def check_folders(input_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the input folder or inside it (outputs would mix with the inputs, and a
    result named like an input would stand for it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; the output must be a folder")
    inputs, outputs = input_dir.resolve(), out_dir.resolve()
    if outputs == inputs or inputs in outputs.parents:
        raise InputError(f"{out_dir}: the output folder must not be the input folder {input_dir} or inside it")


def failure_text(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def output_folder(out_dir: Path) -> Iterator[None]:
    """Create ``out_dir`` (and its parents) for a ``with`` block; if the block raises and the folder it created is
    still empty (say, the identity photo has no face), remove it again, so a failed batch leaves nothing behind."""
    missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{out_dir}: cannot create the output folder ({write_reason(error)})") from error
    try:
        reason = write_problem(out_dir / FAILURES_NAME)  # e.g. /proc: the folder exists but takes no files
        if reason is not None:
            raise InputError(f"{out_dir}: cannot write to the output folder ({reason})")
        yield
    except BaseException:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and what is in it
                break
        raise


def append_failure(out_dir: Path, video: Path, error: BaseException) -> None:
    """Append one JSON line for ``video`` to ``OUT_DIR/failures.jsonl`` (a single write, safe across processes)."""
    record = {"file": str(video), "error": failure_text(error),
              "type": type(error).__name__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(out_dir / FAILURES_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def rendered_by_another_job(video: Path, output: Path, target: BatchTarget, options: JobOptions,
                            quiet: bool = False) -> bool:
    """Whether the existing ``output`` of ``video`` records another job than this batch's for it (other inputs or
    settings that change pixels: its provenance record's ``job_digest`` differs), so that it must be rendered again.
    An output without a digest (written by an older version, or not by retarget) or an input that cannot be read
    counts as finished, as before: nothing is replaced that cannot be told apart. Logs one line when it returns
    True (unless ``quiet``: see :func:`say_rendered_again`)."""
    from retarget.jobs.common import clip_range
    from retarget.jobs.edit import edit_job_key
    from retarget.jobs.run import run_job_key
    from retarget.provenance.metadata import read_provenance
    from retarget.video.reader import VideoReader

    try:
        settings = (read_provenance(output) or {}).get("settings") or {}
        recorded = settings.get("job_digest")
        if not isinstance(recorded, str):
            return False
        reader = VideoReader(video)
        lo, hi = clip_range(reader, None, None)
    except Exception:  # an unreadable output or input: leave it to the clip's own job, as before
        log.debug("cannot compare %s with its job", output, exc_info=True)
        return False
    if target.identity is not None:
        key = run_job_key(video, target.identity, options, target.reference, target.side_by_side, lo, hi,
                          reader.info.pixel_aspect, reader.info.interlaced, paste_back=target.paste_back)
    else:
        key = edit_job_key(video, target.expression, options, target.side_by_side, lo, hi, reader.info.pixel_aspect,
                           reader.info.interlaced)
    if recorded == job_digest(key):
        return False
    if not quiet:
        say_rendered_again(output)
    return True


def say_rendered_again(output: Path) -> None:
    """The line for an output :func:`rendered_by_another_job` found made by another job."""
    log.warning("%s: rendered by another job (other inputs or settings); rendering it again", output)


def frames_in(videos: list[Path], enough: int) -> int:
    """The frames of ``videos`` (their probes) added up until the sum reaches ``enough`` (the other files are not
    opened then); a file that cannot be probed counts none here (it fails in its turn)."""
    from retarget.video.probe import probe_video

    total = 0
    for video in videos:
        if total >= enough:
            break
        try:
            total += probe_video(video).frame_count
        except (InputError, OSError):
            continue
    return total


def prepare_clip_job(session, target: BatchTarget, times: StageTimes | None = None,
                     frames: int | None = None) -> Callable[[Path, Path, Callable[[], None] | None], ScannedClip]:
    """A function ``(video, output, check) -> ScannedClip`` that runs the scan phase of one clip of a batch with
    ``session`` (:class:`~retarget.jobs.session.RenderSession`); the clip's ``render()`` does the rest (see
    :mod:`retarget.jobs.scanned`). ``check``: as for :func:`~retarget.jobs.run.scan_run`; ``times``: the batch's
    shared stage record.

    The model files (see :meth:`RenderSession.load`: the face models now, the diffusion pipeline's headers now and
    the pipeline itself on its own thread with ``options.overlap``, during the first clip's scan) and the shared
    input (identity photo or expression source, read while the pipeline loads) are checked now, so bad ones stop the
    batch once, before any clip is tried. ``frames``: the frames of the whole batch (an estimate; it decides an
    automatic compile, see :func:`~retarget.jobs.session.compile_chosen`). The batch module sits above
    ``run`` and ``edit``, which sit above the session: imports run one way.
    """
    from retarget.jobs.edit import check_expression_source, needs_expressions, read_expression_source, scan_edit
    from retarget.jobs.run import identity_from_photo, scan_run

    options = session.options
    first = max(1, min(options.batch_size, options.chunk_size))  # the first batch of a clip of at least that many
    if target.identity is not None:
        session.load(background=options.overlap, warm_up=(first, "shared" if target.reference else None),
                     frames=frames)
        identity = identity_from_photo(target.identity, session)
        return lambda video, output, check=None: scan_run(
            video, target.identity, output, options, reference=target.reference, side_by_side=target.side_by_side,
            session=session, photo=identity, times=times, check=check, paste_back=target.paste_back)
    check_expression_source(target.expression, options)
    session.load(expressions=needs_expressions(target.expression, options), background=options.overlap,
                 warm_up=(first, "per_frame"), frames=frames)
    source = read_expression_source(target.expression, session)
    return lambda video, output, check=None: scan_edit(
        video, target.expression, output, options, session=session, source=source,
        side_by_side=target.side_by_side, times=times, check=check)


class _ScanStopped(Exception):
    """Raised in a scan ahead (see :func:`scanned_clips`) when the batch stops."""


def scanned_clips(videos: list[Path], scan: Callable[[Path, Callable[[], None] | None], ScannedClip],
                  ahead: bool, device=None) -> Iterator[tuple[Path, ScannedClip | Exception]]:
    """Each of ``videos`` with its scan phase's result, in order: the :class:`ScannedClip` to render, or the
    exception that stopped its scan (a clip's failure is the caller's to record; ``KeyboardInterrupt`` and other
    ``BaseException``\\ s propagate).

    With ``ahead`` the next clip is scanned on a worker thread (its CUDA device set to ``device``) while the caller
    renders the one just yielded, so the model is not idle during the scans; its output stays locked from its
    scan to its render. Closing the generator early (the caller stops, e.g. on Ctrl-C) stops a scan in flight at
    its next chunk and releases a clip scanned but not rendered. Without ``ahead`` each clip is scanned on the
    calling thread when it is reached.
    """
    def scan_one(video: Path, check=None) -> ScannedClip | Exception:
        try:
            return scan(video, check)
        except Exception as error:  # this clip's failure, recorded by the caller; the others go on
            log.debug("scan failed: %s", video, exc_info=True)
            return error

    if not ahead:
        for video in videos:
            yield video, scan_one(video)
        return

    from retarget.devices import use_device

    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise _ScanStopped("the batch stopped")

    def worker(video: Path) -> ScannedClip | Exception:
        use_device(device)  # the current CUDA device is per thread
        return scan_one(video, check)

    pool = ThreadPoolExecutor(1, thread_name_prefix="retarget-scan")
    pending = pool.submit(worker, videos[0]) if videos else None
    try:
        for index, video in enumerate(videos):
            result = pending.result()
            pending = pool.submit(worker, videos[index + 1]) if index + 1 < len(videos) else None
            yield video, result
    finally:
        stop.set()
        pool.shutdown(wait=True)  # a scan in flight stops at its next chunk
        if pending is not None and pending.exception() is None and isinstance(pending.result(), ScannedClip):
            pending.result().release()  # scanned, never to be rendered


def batch_job(input_dir, output_dir, target: BatchTarget, options: JobOptions,
              share: tuple[int, int] | None = None) -> BatchReport:
    """Process this process's share of the videos in ``input_dir``; returns the counts.

    Errors about the shared inputs (identity photo, expression source, weights) and a diffusion batch out of
    device memory stop the batch with one error, since every file would fail the same way; errors of one video are
    logged and the batch goes on.

    Stages: with ``options.overlap`` the diffusion pipeline loads during the first clip's scan and, where the
    scan and the model's work overlap (:func:`~retarget.jobs.session.overlaps_scan`: on CUDA), each clip is
    scanned while the one before renders (:func:`scanned_clips`). Two clips are then in host memory at once, so
    each gets half of ``options.memory_budget`` (whatever the number of clips left, so that a resumed batch cuts a
    clip into chunks of the same length as before). The outputs do not depend on it. The batch's stage record
    (:func:`~retarget.jobs.stage_times.last_job`) sums every clip's.
    """
    from tqdm.auto import tqdm

    from retarget.devices import resolve_device
    from retarget.jobs.session import AUTO_COMPILE_FRAMES, DeviceMemoryError, RenderSession, overlaps_scan

    input_dir, out_dir = Path(input_dir), Path(output_dir)
    videos = list_videos(input_dir)
    if not videos:
        raise InputError(f"{input_dir}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    check_folders(input_dir, out_dir)
    index, count = share if share is not None else process_share()
    with output_folder(out_dir):
        outputs = {video: out_dir / name for video, name in output_names(videos).items()}
        mine = shard(videos, index, count)
        again = [v for v in mine if outputs[v].exists() and rendered_by_another_job(v, outputs[v], target, options,
                                                                                      quiet=True)]
        todo = [v for v in mine if not outputs[v].exists() or v in again]
        report = BatchReport(skipped=len(mine) - len(todo))
        if not todo:
            return report
        ahead = options.overlap and overlaps_scan(resolve_device(options.device))
        if ahead:  # a clip rendering and the next one's scan share the budget (also with one clip left: a resumed
            options = replace(options, memory_budget=options.memory_budget / 2)  # clip keeps its chunk length)
        times = StageTimes("batch")
        session = RenderSession(options)
        # the whole batch's frames decide an automatic compile (probes: milliseconds per thousand frames)
        frames = frames_in(todo, AUTO_COMPILE_FRAMES) if options.compile is None else None
        scan = prepare_clip_job(session, target, times, frames)  # a bad shared input stops the batch here, before
        for video in again:                                      # the lines announcing work on any clip
            say_rendered_again(outputs[video])
        bar = tqdm(total=len(todo), desc=f"batch {index + 1}/{count}" if count > 1 else "batch", unit="clip",
                   disable=not options.progress)
        clips = scanned_clips(todo, lambda video, check: scan(video, outputs[video], check), ahead, session.device)
        with closing(clips):
            for video, scanned in clips:
                try:
                    if isinstance(scanned, Exception):
                        raise scanned
                    scanned.render()
                    report.done += 1
                except KeyboardInterrupt:
                    raise
                except DeviceMemoryError:  # every clip's batches are the same size: each would run out alike
                    raise
                except OutputBusyError as error:  # another batch on this folder has it: not a failure of the file
                    log.warning("%s (left to it; the batch goes on)", error)
                    report.busy += 1
                except Exception as error:  # one bad file must not stop the others
                    if session.failed_load is not None:  # the weights: every clip would fail the same way
                        raise session.failed_load from None
                    log.debug("failed: %s", video, exc_info=True)
                    append_failure(out_dir, video, error)
                    text = failure_text(error)
                    log.warning("%s (recorded in %s; the batch goes on)",
                                text if str(video) in text else f"{video}: {text}", out_dir / FAILURES_NAME)
                    report.failed += 1
                bar.update(1)
        bar.close()
        times.add("load", session.load_seconds)
        times.set_load_parts(session.load_parts)
        finish_job(times)
        return report
