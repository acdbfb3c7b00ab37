"""Where a job's time goes: each stage's busy time, the time to the first finished frame, frames/s, memory peaks.

A :class:`StageTimes` is filled by the job functions (``run``, ``edit``) and their stages, from any thread:
``with times.stage("decode"): ...`` adds the block's wall time to that stage's busy time. Stages run at once on
different threads when the job overlaps them (see :mod:`retarget.jobs.stages`), so the busy times may add up to
more than the job's wall time; each one alone is at most the wall time. Stage names: :data:`STAGES`.

At the end of a job :func:`finish_job` logs one line (INFO, logger ``retarget.jobs.stage_times``; the command
line shows it with ``--debug``) and keeps the record as :func:`last_job` (the benchmark reads it).
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: The stages a job records, in pipeline order (``load``: the diffusion pipeline's load, on its own thread).
STAGES = ("load", "decode", "detect", "smirk", "arcface", "render", "paste", "encode")

_last: "StageTimes | None" = None
_last_lock = threading.Lock()


class StageTimes:
    """Busy seconds per stage (:data:`STAGES`), frames finished, the time from the start to the first finished
    frame (``first_frame_s``), and the job's device and dtype. Thread-safe. Times are ``time.perf_counter``
    seconds from the recorder's creation (the job's start)."""

    def __init__(self, command: str = "job"):
        self.command = command
        self.started = time.perf_counter()
        self.busy = {name: 0.0 for name in STAGES}
        self.frames = 0
        self.first_frame_s: float | None = None
        self.wall_s: float | None = None
        self.device = "cpu"
        self.dtype = "fp32"
        self.load_parts: dict[str, float] = {}
        self.batches = 0  # diffusion batches (see batch_done)
        self.first_batch_s: float | None = None
        self.later_batches_s = 0.0  # the batches after the first: total and longest seconds
        self.longest_later_batch_s = 0.0
        self.compiles_in_render = 0
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` of busy time to stage ``name`` (one of :data:`STAGES`)."""
        if name not in self.busy:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        with self._lock:
            self.busy[name] += float(seconds)

    @contextmanager
    def stage(self, name: str):
        """Time the ``with`` block as busy time of stage ``name``."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begin)

    def frames_done(self, count: int) -> None:
        """Count ``count`` more finished (encoded and saved) frames; the first call sets ``first_frame_s``."""
        with self._lock:
            if self.first_frame_s is None and count > 0:
                self.first_frame_s = time.perf_counter() - self.started
            self.frames += int(count)

    def batch_done(self, seconds: float, compiles: int = 0) -> None:
        """Record one diffusion batch: its wall ``seconds`` (the results on the host, so the device's work is
        included) and the ``compiles`` (``torch.compile`` frame compilations, see :func:`dynamo_compiles`) it
        caused. A compiled job whose later batches compile again, or whose later batches are slow, shows it here."""
        with self._lock:
            if self.batches == 0:
                self.first_batch_s = float(seconds)
            else:
                self.later_batches_s += float(seconds)
                self.longest_later_batch_s = max(self.longest_later_batch_s, float(seconds))
            self.batches += 1
            self.compiles_in_render += int(compiles)

    def set_model(self, device, dtype) -> None:
        """Record where the model runs: ``device`` (e.g. ``cuda:0``) and ``dtype`` (a torch dtype or a name)."""
        self.device = str(device)
        self.dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
            str(dtype).replace("torch.", ""), str(dtype).replace("torch.", ""))

    def set_load_parts(self, parts: dict[str, float]) -> None:
        """Record what the ``load`` stage's seconds were spent on (e.g. ``imports``, ``unet``, ``to_device``)."""
        self.load_parts = {name: round(float(value), 4) for name, value in parts.items()}

    def finish(self) -> None:
        """Stop the clock (``wall_s``)."""
        self.wall_s = time.perf_counter() - self.started

    def summary(self) -> dict:
        """The figures as a JSON-ready dict: ``command``, ``frames``, ``wall_s``, ``frames_per_s``,
        ``first_frame_s``, ``busy_s`` (per stage), ``load_parts_s`` (the ``load`` stage's parts, empty when not
        recorded), ``batches`` (the diffusion batches: ``count``, ``first_s``, and ``mean_later_s`` and
        ``max_later_s`` of the others, None without them), ``compiles_in_render`` (``torch.compile`` frame
        compilations during the batches: 0 when the compile was done before, e.g. by the warm-up), ``device``,
        ``dtype``, ``peak_gpu_mib`` (None without CUDA), ``peak_host_mib`` (the process's peak resident set)."""
        wall = self.wall_s if self.wall_s is not None else time.perf_counter() - self.started
        return {
            "command": self.command, "frames": self.frames, "wall_s": round(wall, 4),
            "frames_per_s": round(self.frames / wall, 4) if wall > 0 else None,
            "first_frame_s": None if self.first_frame_s is None else round(self.first_frame_s, 4),
            "busy_s": {name: round(value, 4) for name, value in self.busy.items()},
            "load_parts_s": dict(self.load_parts),
            "batches": {
                "count": self.batches,
                "first_s": None if self.first_batch_s is None else round(self.first_batch_s, 4),
                "mean_later_s": round(self.later_batches_s / (self.batches - 1), 4) if self.batches > 1 else None,
                "max_later_s": round(self.longest_later_batch_s, 4) if self.batches > 1 else None,
            },
            "compiles_in_render": self.compiles_in_render,
            "device": self.device, "dtype": self.dtype,
            "peak_gpu_mib": peak_gpu_mib(self.device), "peak_host_mib": peak_host_mib(),
        }

    def line(self) -> str:
        """One readable line of :meth:`summary`."""
        s = self.summary()
        busy = " ".join(f"{name} {value:.2f}s" for name, value in s["busy_s"].items())
        first = "-" if s["first_frame_s"] is None else f"{s['first_frame_s']:.2f}s"
        gpu = "" if s["peak_gpu_mib"] is None else f", peak GPU {s['peak_gpu_mib']:.0f} MiB"
        b = s["batches"]
        batches = ""
        if b["count"]:  # jobs that render: their diffusion batches
            later = "" if b["mean_later_s"] is None else f", later {b['mean_later_s']:.2f}s on average"
            compiled = f", {s['compiles_in_render']} compiled during them" if s["compiles_in_render"] else ""
            batches = f"{b['count']} batch{'es' if b['count'] > 1 else ''} (first {b['first_s']:.2f}s{later}" \
                f"{compiled}); "
        return (f"{s['command']}: {s['frames']} frames in {s['wall_s']:.2f}s ({s['frames_per_s'] or 0:.2f} frames/s), "
                f"first frame after {first}; busy: {busy}; {batches}{s['device']} {s['dtype']}{gpu}, "
                f"peak host {s['peak_host_mib']:.0f} MiB")


def peak_host_mib() -> float:
    """The process's peak resident set size in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def peak_gpu_mib(device: str) -> float | None:
    """``torch.cuda.max_memory_allocated`` of ``device`` in MiB, or None for a device that is not CUDA."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


def dynamo_compiles() -> int:
    """How many frames ``torch.compile`` (dynamo) has compiled in this process so far, recompilations included
    (0 while it has not been imported: nothing was compiled)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["frames"]["total"])


def finish_job(times: StageTimes) -> StageTimes:
    """Stop ``times``, log its line (INFO) and keep it as :func:`last_job`; returns it."""
    times.finish()
    log.info("stages %s", times.line())
    global _last
    with _last_lock:
        _last = times
    return times


def last_job() -> StageTimes | None:
    """The record of the last job that finished in this process (None before the first)."""
    with _last_lock:
        return _last
