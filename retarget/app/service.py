"""The app's three actions (retarget, edit, motion) as plain functions of the page's values.

Each action builds a :class:`~retarget.jobs.options.JobOptions` from the app's model settings and the page's
controls (:class:`Controls`, the command line's defaults), runs the command line's own job function
(``run_job``, ``edit_job``, ``extract_job`` + ``plot_job``) through :func:`~retarget.app.jobs.start_job` with the
warm session for those model settings, and returns an :class:`Outcome`: the output files, the job's warnings and
a status line, which for a failure is the command line's one-line message (``retarget: error: ...``).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from retarget.app.jobs import JobControl, JobProgress, SessionCache, Workspace, start_job
from retarget.cli import PROG, _error_line, _neutral_frame
from retarget.errors import InputError
from retarget.jobs.options import JobOptions, default_models_dir
from retarget.motion.adjust import PartGains

#: How often (seconds) a waiting action passes the job's progress on.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class AppSettings:
    """What ``retarget app`` was started with: the model files and where jobs run (``None`` = as the CLI)."""

    models: Path = field(default_factory=default_models_dir)
    base_model: str | None = None
    device: str | None = None
    dtype: str | None = None


#: The plain defaults of :class:`JobOptions`, the one place the command line's and the page's defaults come from.
_JOB_DEFAULTS = {f.name: f.default for f in fields(JobOptions) if f.default is not MISSING}


@dataclass(frozen=True)
class Controls:
    """The page's settings, with the command line's defaults. ``neutral_frame`` is text as on the command line
    (``auto`` or a frame number); ``start``/``end`` are seconds, as numbers or text, or None or empty text (the
    whole clip); ``face_reference`` is a photo path or
    None (then ``face_index`` picks the face)."""

    steps: int = _JOB_DEFAULTS["steps"]
    guidance: float = _JOB_DEFAULTS["guidance"]
    expression_scale: float = _JOB_DEFAULTS["expression_scale"]
    reference_scale: float = _JOB_DEFAULTS["reference_scale"]
    reference: bool = True
    seed: int = _JOB_DEFAULTS["seed"]
    smooth: str = _JOB_DEFAULTS["smooth"]
    relative: bool = _JOB_DEFAULTS["relative"]
    neutral_frame: str = "auto"
    expression_gain: float = PartGains().expression
    eyelid_gain: float = PartGains().eyelid
    jaw_gain: float = PartGains().jaw
    face_index: int = _JOB_DEFAULTS["face_index"]
    face_reference: str | None = None
    start: float | str | None = None
    end: float | str | None = None
    side_by_side: bool = False
    color_match: bool = False
    paste_back: bool = False


@dataclass
class Outcome:
    """What an action produced: ``files`` by name (``video``, ``motion``, ``curves``), ``warnings`` (log lines)
    and ``status`` (one line: done, cancelled, or ``retarget: error: ...``)."""

    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    status: str = ""
    ok: bool = False


def _number(value, cast, name: str):
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None


def job_options(settings: AppSettings, controls: Controls) -> JobOptions:
    """The job options of ``settings`` and ``controls`` (one-line :class:`InputError` for bad values)."""
    try:
        neutral = _neutral_frame(str(controls.neutral_frame or "auto").strip())
    except argparse.ArgumentTypeError as error:
        raise InputError(f"--neutral-frame: {error}") from None
    return JobOptions(
        models=settings.models, base_model=settings.base_model, device=settings.device, dtype=settings.dtype,
        steps=_number(controls.steps, int, "--steps"), guidance=_number(controls.guidance, float, "--guidance"),
        expression_scale=_number(controls.expression_scale, float, "--expression-scale"),
        reference_scale=_number(controls.reference_scale, float, "--reference-scale"),
        seed=_number(controls.seed, int, "--seed"), smooth=controls.smooth, relative=bool(controls.relative),
        neutral_frame=neutral,
        gains=PartGains(expression=_number(controls.expression_gain, float, "--expression-gain"),
                        eyelid=_number(controls.eyelid_gain, float, "--eyelid-gain"),
                        jaw=_number(controls.jaw_gain, float, "--jaw-gain")),
        face_index=_number(controls.face_index, int, "--face-index"),
        face_reference=Path(controls.face_reference) if controls.face_reference else None,
        color_match=bool(controls.color_match), progress=True,
    )


def time_range(controls: Controls) -> tuple[float | None, float | None]:
    """``(start, end)`` in seconds from the page's fields (empty: None)."""
    return _number(controls.start, float, "--start"), _number(controls.end, float, "--end")


def _required(path, what: str) -> Path:
    if not path:
        raise InputError(f"no {what} given")
    return Path(path)


class AppService:
    """The app's state: settings, warm sessions, job folders and the running job (one at a time)."""

    def __init__(self, settings: AppSettings, workspace: Workspace | None = None):
        self.settings = settings
        self.sessions = SessionCache()
        self.workspace = workspace or Workspace()
        self._current: JobControl | None = None
        self._owner: str | None = None  # the page (browser session) whose job runs
        self._lock = threading.Lock()

    @property
    def running(self) -> JobControl | None:
        """The control of the running job, or None."""
        with self._lock:
            return self._current

    def cancel(self, owner: str | None = None) -> str:
        """Ask the running job to stop if it is ``owner``'s (the page that started it; None: whoever started it);
        returns a status line. Another page's job runs on: one page's Cancel never stops another's job."""
        with self._lock:
            control, running_for = self._current, self._owner
        if control is None:
            return "No job is running."
        if owner is not None and running_for != owner:
            return "No job of this page is running (the running job is another page's)."
        control.cancel()
        return "Cancelling..."

    def _execute(self, prepare: Callable[[Path], tuple[Callable[[], object], Callable[[object], dict]]],
                 report: Callable[[JobProgress], None] | None, owner: str | None = None) -> Outcome:
        """Run one job for the page ``owner``: ``prepare(folder)`` checks the page's values and returns the job
        function and a function from its return value to the outcome's files."""
        outcome = Outcome()
        try:
            job_function, files_of = prepare(self.workspace.new_folder())
        except Exception as error:  # bad values: the CLI's one line
            outcome.status = f"{PROG}: error: {_error_line(error)}"
            return outcome
        control = JobControl()
        with self._lock:
            self._current, self._owner = control, owner
        job = start_job(job_function, control)
        try:
            seen = None
            while not job.wait(POLL_SECONDS):
                progress = control.progress
                if report is not None and progress is not None and progress != seen:
                    report(progress)
                    seen = progress
        except BaseException:  # the page went away: stop the job rather than leave it running unseen
            control.cancel()
            job.wait()
            raise
        finally:
            with self._lock:
                self._current = self._owner = None
        outcome.warnings = job.warnings
        if job.cancelled:
            done = control.progress
            outcome.status = "Cancelled" + (f" at {done.done} of {done.total} frames ({done.desc})." if done else ".")
        elif job.error is not None:
            outcome.status = f"{PROG}: error: {_error_line(job.error)}"
        else:
            outcome.files = files_of(job.value)
            outcome.ok = True
            outcome.status = "Done" + (f" with {len(job.warnings)} warning(s)." if job.warnings else ".")
        return outcome

    def retarget(self, driving, identity, controls: Controls,
                 report: Callable[[JobProgress], None] | None = None, owner: str | None = None) -> Outcome:
        """``retarget run``: ``driving``'s performance on the person in the ``identity`` photo."""
        from retarget.jobs.run import run_job

        def prepare(folder: Path):
            video, photo = _required(driving, "driving video"), _required(identity, "identity photo")
            options = job_options(self.settings, controls)
            start, end = time_range(controls)
            output = folder / f"{video.stem}-retarget.mp4"
            session = self.sessions.session(options)
            return (lambda: run_job(video, photo, output, options, reference=controls.reference,
                                    side_by_side=controls.side_by_side, start=start, end=end,
                                    session=session, paste_back=bool(controls.paste_back)),
                    lambda path: {"video": Path(path)})

        return self._execute(prepare, report, owner)

    def edit(self, video, expression, controls: Controls,
             report: Callable[[JobProgress], None] | None = None, owner: str | None = None) -> Outcome:
        """``retarget edit``: ``video``'s person with the expressions of ``expression`` (photo, video or .npz)."""
        from retarget.jobs.edit import edit_job

        def prepare(folder: Path):
            clip, source = _required(video, "video"), _required(expression, "expression source")
            options = job_options(self.settings, controls)
            start, end = time_range(controls)
            output = folder / f"{clip.stem}-edit.mp4"
            session = self.sessions.session(options)
            return (lambda: edit_job(clip, source, output, options, start=start, end=end,
                                     side_by_side=controls.side_by_side, session=session),
                    lambda path: {"video": Path(path)})

        return self._execute(prepare, report, owner)

    def motion(self, video, channels: str | None, controls: Controls,
               report: Callable[[JobProgress], None] | None = None, owner: str | None = None) -> Outcome:
        """``retarget extract`` then ``retarget plot``: the clip's motion file and its expression curves
        (``channels``: comma-separated, empty = the plot's defaults; smoothed with ``controls.smooth``)."""
        from retarget.jobs.extract import extract_job
        from retarget.jobs.plot import plot_job

        def prepare(folder: Path):
            clip = _required(video, "video")
            options = job_options(self.settings, controls)
            motion_file, curves = folder / f"{clip.stem}.motion.npz", folder / f"{clip.stem}-curves.png"
            session = self.sessions.session(options)
            chosen = channels.split(",") if channels and channels.strip() else None

            def job():
                extract_job(clip, motion_file, options, faces=session.faces)
                plot_job(motion_file, curves, smooth_method=options.smooth, channels=chosen)
                return motion_file, curves

            return job, lambda paths: {"motion": paths[0], "curves": paths[1]}

        return self._execute(prepare, report, owner)

    def close(self) -> None:
        self.workspace.close()
