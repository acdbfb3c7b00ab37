"""What the web app does behind its buttons, without Gradio: warm sessions, controlled jobs, job folders.

* :class:`SessionCache`: one :class:`~retarget.jobs.session.RenderSession` per set of model options (models
  folder, base model, device, dtype, VAE precision, compile, SMIRK channel order, batch size), loaded once and kept
  warm; each job gets it with the job's own :class:`~retarget.jobs.options.JobOptions` put in.
* :func:`start_job`: runs a job function (``run_job``, ``edit_job``, ``extract_job``, ...) in a thread under a
  :class:`JobControl`. The job's own tqdm bars (``tqdm.auto.tqdm``, which the jobs import when they run) report
  frames to the control, and check its cancel flag at every update and every diffusion batch: a cancelled job stops
  there with :class:`JobCancelled` (a resumable render leaves its finished chunks, which the job folder's removal
  takes away). The job thread's log records of level WARNING and above and the ``warnings.warn`` messages of the
  retarget package itself (shown even where the command line silences Python warnings; deprecations left out,
  repeats once) are collected.
* :class:`Workspace`: one temporary folder per job under the app's own temporary folder; a new job removes the
  folders of older ones (except the latest, whose files the page may still be serving), :meth:`Workspace.close`
  removes everything.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession

#: JobOptions fields that decide what a session loads; jobs that agree on them share one warm session.
MODEL_FIELDS = ("models", "base_model", "device", "dtype", "vae_fp32", "compile", "compile_mode", "smirk_channels",
                "batch_size")


class JobCancelled(Exception):
    """Raised inside a job's thread at its next progress update after :meth:`JobControl.cancel`."""

    def __init__(self):
        super().__init__("cancelled")


@dataclass(frozen=True)
class JobProgress:
    """The latest report of a job's frame bar: ``desc`` (e.g. ``run clip.mp4``), ``done`` of ``total`` frames."""

    desc: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (0 for an unknown total)."""
        return min(1.0, self.done / self.total) if self.total else 0.0


class JobControl:
    """A job's cancel flag and latest progress, shared between the job's thread and the page's handler."""

    def __init__(self):
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress: JobProgress | None = None

    def cancel(self) -> None:
        """Ask the job to stop at its next progress update (returns at once)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` when cancel was asked for."""
        if self._cancel.is_set():
            raise JobCancelled()

    def report(self, desc: str, done: int, total: int) -> None:
        with self._lock:
            self._progress = JobProgress(desc, int(done), int(total))

    @property
    def progress(self) -> JobProgress | None:
        with self._lock:
            return self._progress


def controlled_bar(control: JobControl) -> type:
    """A tqdm class whose bars check ``control`` for cancel at each update and each iteration step, and report the
    progress of frame bars (``unit="frame"``) to it; the text bar itself is written to a discarded buffer."""
    from tqdm.std import tqdm as std_tqdm

    class ControlledBar(std_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            self._report()

        def _report(self) -> None:
            if not self.disable and self.unit == "frame" and self.total:
                control.report(self.desc.rstrip(": "), self.n, self.total)

        def update(self, n=1):
            control.check()
            result = super().update(n)
            self._report()
            return result

        def __iter__(self):
            for item in super().__iter__():
                control.check()
                yield item

    return ControlledBar


#: Threads of a job: the job's own thread and the workers the jobs start (pipeline load, prefetch, finish), all
#: named with this prefix (one controlled job runs at a time, so they belong to it).
JOB_THREAD_PREFIX = "retarget-"


def _job_thread(thread_id: int, job_thread_id: int, name: str) -> bool:
    return thread_id == job_thread_id or name.startswith(JOB_THREAD_PREFIX)


class _ThreadRecords(logging.Handler):
    """Collects the formatted messages of one job's records: its own thread's and its workers'."""

    def __init__(self, thread_id: int):
        super().__init__(logging.WARNING)
        self.thread_id = thread_id
        self.messages: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _job_thread(record.thread, self.thread_id, record.threadName or ""):
            self.messages.append(self.format(record))


_PACKAGE = Path(__file__).resolve().parents[1]  # the retarget package: its own warnings are the job's
_job_lock = threading.Lock()  # one controlled job at a time: the tqdm swap below is process-wide


@dataclass
class RunningJob:
    """A job started by :func:`start_job`. After :meth:`wait` returns True: ``value`` (the job function's return
    value) or ``error`` (the exception it raised, :class:`JobCancelled` after a cancel), and ``warnings`` (its
    thread's log messages of level WARNING and above)."""

    control: JobControl
    thread: threading.Thread | None = None
    value: object = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once the job has ended."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, JobCancelled)


#: Warning categories that are not shown in the page (they concern the code, not the job's inputs or results).
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning)


def start_job(function: Callable[[], object], control: JobControl | None = None) -> RunningJob:
    """Run ``function()`` in a new thread under ``control`` (a new one by default); returns at once."""
    import tqdm.auto

    job = RunningJob(control or JobControl())

    def target():
        records = _ThreadRecords(threading.get_ident())
        logger = logging.getLogger("retarget")
        with _job_lock, warnings.catch_warnings():
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                current = threading.current_thread()
                if (_job_thread(current.ident, records.thread_id, current.name)
                        and Path(filename).is_relative_to(_PACKAGE)):
                    line_text = f"WARNING {Path(filename).stem}: {message}"
                    # Deprecations are for developers, not for the person in the page; repeats are shown once.
                    if not issubclass(category, _DEVELOPER_WARNINGS) and line_text not in records.messages:
                        records.messages.append(line_text)
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.simplefilter("always")
            warnings.showwarning = show
            saved = tqdm.auto.tqdm
            tqdm.auto.tqdm = controlled_bar(job.control)
            logger.addHandler(records)
            try:
                job.control.check()
                job.value = function()
            except BaseException as error:  # handed to the page as one line
                job.error = error
            finally:
                tqdm.auto.tqdm = saved
                logger.removeHandler(records)
                job.warnings = records.messages

    job.thread = threading.Thread(target=target, name="retarget-app-job", daemon=True)
    job.thread.start()
    return job


class SessionCache:
    """Warm :class:`~retarget.jobs.session.RenderSession` objects, one per distinct :data:`MODEL_FIELDS`."""

    def __init__(self):
        self._sessions: dict[tuple, RenderSession] = {}

    @staticmethod
    def key(options: JobOptions) -> tuple:
        return tuple(str(getattr(options, name)) for name in MODEL_FIELDS)

    def session(self, options: JobOptions) -> RenderSession:
        """The session for ``options``' model fields (created on first use, models loaded by the job), with
        ``options`` as its options so sampling settings (steps, guidance, seed, ...) are this job's."""
        key = self.key(options)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = RenderSession(options)
        if session.options.face_reference != options.face_reference:
            session._face_reference = None  # the followed person is read again from the new photo
        session.options = options
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        """The sessions created so far."""
        return iter(list(self._sessions.values()))


class Workspace:
    """Job folders under one temporary folder of the app's own."""

    def __init__(self, parent: Path | None = None):
        self.parent = parent
        self.root: Path | None = None  # made by the first job
        self._folders: list[Path] = []
        self._lock = threading.Lock()

    def new_folder(self) -> Path:
        """A new empty folder for one job's outputs; the folders of all jobs but the latest are removed."""
        with self._lock:
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="retarget-app-", dir=self.parent))
            while len(self._folders) > 1:
                shutil.rmtree(self._folders.pop(0), ignore_errors=True)
            folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            self._folders.append(folder)
            return folder

    def close(self) -> None:
        """Remove every job folder and the root."""
        with self._lock:
            self._folders.clear()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
