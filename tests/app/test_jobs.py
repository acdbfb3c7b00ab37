"""Controlled jobs without the page: frame progress from the jobs' own bars, cancel that stops a real render
(which then resumes), collected warnings, and the warm-session cache."""

from __future__ import annotations

import logging
import threading
from functools import partial

import numpy as np
import pytest

from retarget.app.jobs import JobCancelled, JobControl, SessionCache, Workspace, start_job
from retarget.jobs.options import JobOptions
from retarget.jobs.run import run_job
from retarget.video.encoding import EncoderSettings
from tests.app.helpers import video_frames
from tests.renders import assert_same_render


class Recording(JobControl):
    """Records every progress report; cancels itself once the bar ``desc`` has reported ``cancel_at`` frames."""

    def __init__(self, cancel_at: int | None = None, desc: str = "run clip.mp4"):
        super().__init__()
        self.reports = []
        self.cancel_at, self.desc = cancel_at, desc

    def report(self, desc, done, total):
        super().report(desc, done, total)
        self.reports.append((desc, done, total))
        if self.cancel_at is not None and desc == self.desc and done >= self.cancel_at:
            self.cancel()


@pytest.fixture
def options(cli_models):
    models, base = cli_models
    return JobOptions(models=models, base_model=str(base), device="cpu", steps=2, guidance=1.0, batch_size=4,
                      chunk_size=4)


def run(function, control) -> object:
    job = start_job(function, control)
    assert job.wait(300)
    return job


def test_progress_follows_the_jobs_frames(options, media, tmp_path):
    control = Recording()
    job = run(partial(run_job, media["clip"], media["photo"], tmp_path / "out.mp4", options), control)
    assert job.error is None and job.value == tmp_path / "out.mp4"
    render = [(done, total) for desc, done, total in control.reports if desc == "run clip.mp4"]
    assert render == [(0, 12), (4, 12), (8, 12), (12, 12)]  # one report per chunk of 4 frames
    scan = [(done, total) for desc, done, total in control.reports if desc == "faces clip.mp4"]
    assert scan[0] == (0, 12) and scan[-1] == (12, 12)
    assert control.progress.fraction == 1.0


@pytest.mark.parametrize("overlap", [True, False])
def test_cancel_stops_the_render_and_the_render_resumes(overlap, options, media, tmp_path):
    options.overlap = overlap
    # Lossless: x264 spreads a last-bit difference of the CPU floats (which can differ between two renders of the
    # same frames) over whole blocks at its default quality; losslessly, the frames come back as they were saved.
    options.encoder = EncoderSettings(crf=0, preset="ultrafast")
    output = tmp_path / "out.mp4"
    control = Recording(cancel_at=4)
    job = run(partial(run_job, media["clip"], media["photo"], output, options), control)
    assert job.cancelled and isinstance(job.error, JobCancelled)
    assert not output.exists()
    work = output.with_name(output.name + ".retarget-work")
    # The first chunk's 4 frames are reported once it is saved. In the sequential order that is before the second
    # chunk renders, so the cancel stops at the second chunk's diffusion batch. Overlapped, the first chunk is
    # saved while the second renders: the cancel stops that render at its next batch, unless the render ended
    # first (then the second chunk is saved too, and the cancel stops the third).
    kept = len(list(work.glob("chunk_*")))
    assert kept == 1 if not overlap else kept in (1, 2)
    from retarget.video import work_lock  # the cancelled job let go of its work folder (the job keeps its error)

    assert all(path != str(work.resolve()) for _, path in work_lock._held)

    resumed = Recording()
    job = run(partial(run_job, media["clip"], media["photo"], output, options), resumed)
    assert job.error is None and not work.exists()
    render = [(done, total) for desc, done, total in resumed.reports if desc == "run clip.mp4"]
    assert render[0] == (4 * kept, 12) and render[-1] == (12, 12)  # the finished chunks were kept

    fresh = run(partial(run_job, media["clip"], media["photo"], tmp_path / "fresh.mp4", options), JobControl())
    assert fresh.error is None
    resumed_frames, fresh_frames = video_frames(output)[0], video_frames(tmp_path / "fresh.mp4")[0]
    assert resumed_frames.shape == (12, 32, 32, 3)
    assert_same_render(resumed_frames, fresh_frames)


def test_cancel_before_start():
    control = JobControl()
    control.cancel()
    calls = []
    job = run(lambda: calls.append(1), control)
    assert job.cancelled and calls == []


def test_warnings_of_the_job_thread_are_collected():
    from retarget.video.orientation import orientation_from_display_matrix

    log = logging.getLogger("retarget.test")

    def job():
        log.warning("frame %d has two faces", 7)
        log.info("not collected: below WARNING")
        other = threading.Thread(target=log.warning, args=("not collected: another thread",))
        other.start()
        other.join()
        return "done"

    first = run(job, JobControl())
    assert first.value == "done" and first.warnings == ["WARNING retarget.test: frame 7 has two faces"]

    from retarget.jobs.stages import run_stages

    def staged():  # the jobs' worker threads (prefetch, finish) belong to the job
        run_stages([0, 1], prepare=lambda item: log.warning("prefetch %d", item),
                   process=lambda item, prepared: item,
                   finish=lambda item, prepared, result: log.warning("finish %d", item))
        return "staged"

    staged_job = run(staged, JobControl())
    assert staged_job.value == "staged"
    assert sorted(staged_job.warnings) == [f"WARNING retarget.test: {stage} {i}" for stage in ("finish", "prefetch")
                                           for i in (0, 1)]

    turned = np.array([56756, 32768, 0, -32768, 56756, 0, 0, 0, 1 << 30])  # 30 degrees in 16.16 fixed point
    second = run(partial(orientation_from_display_matrix, turned), JobControl())
    assert second.error is None
    assert len(second.warnings) == 1 and "display rotation of" in second.warnings[0]
    assert "rounded to 0" in second.warnings[0]

    import warnings

    import retarget.video.orientation as orientation_module

    def noisy():
        for _ in range(3):  # the same warning for every frame is shown once
            warnings.warn_explicit("one face per frame", UserWarning, orientation_module.__file__, 1)
        warnings.warn_explicit("numpy.fix is deprecated", DeprecationWarning, orientation_module.__file__, 2)

    third = run(noisy, JobControl())
    assert third.error is None and third.warnings == ["WARNING orientation: one face per frame"]


def test_session_cache_reuses_one_session_per_model_options(options, media):
    cache = SessionCache()
    first = cache.session(options)
    reseeded = JobOptions(**{**options.__dict__, "seed": 5, "steps": 3})
    assert cache.session(reseeded) is first and first.options is reseeded
    other = JobOptions(**{**options.__dict__, "dtype": "bf16"})
    assert cache.session(other) is not first and len(cache) == 2


def test_workspace_keeps_only_the_latest_job_folder(tmp_path):
    workspace = Workspace(tmp_path)
    folders = []
    for _ in range(3):
        folders.append(workspace.new_folder())
        (folders[-1] / "result.mp4").write_bytes(b"x")
    assert [f.exists() for f in folders] == [False, True, True]  # the previous result may still be served
    workspace.new_folder()
    assert not folders[1].exists() and folders[2].exists()
    workspace.close()
    assert not workspace.root.exists()
