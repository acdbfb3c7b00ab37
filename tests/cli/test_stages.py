"""Overlapped stages (:mod:`retarget.jobs.stages`): the same output as the sequential order, worker failures as
one-line errors that keep the finished chunks for a resume, a broken pipeline stopping the face scan early,
decode-once, and the stage recorder's figures."""

from __future__ import annotations

import json
import logging
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from retarget.cli import main
from retarget.errors import InputError
from retarget.faces.models import FaceModels
from retarget.jobs.frames import ClipScan, frames_of_span, scan_clip
from retarget.jobs.stage_times import STAGES, last_job
from retarget.jobs.stages import run_stages
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.reader import VideoReader
from retarget.video.resume import WORK_SUFFIX, ChunkedRender
from tests.cli.conftest import FRAMES
from tests.cli.test_errors_batch_weights import assert_one_line_error, run_cli
from tests.renders import assert_same_render

CASES = {
    "run": lambda media: ["run", media["clip"], "--identity", media["photo"]],
    "run-side-by-side": lambda media: ["run", media["clip"], "--identity", media["photo"], "--side-by-side"],
    "edit": lambda media: ["edit", media["clip"], "--expression", media["photo"]],
}

#: Lossless encoding: libx264's bitstream is not repeatable from run to run with its frame threads (the same
#: frames can encode to different lossy pictures), so the outputs are compared where decoding gives back exactly
#: the frames that were saved.
LOSSLESS = ["--crf", "0", "--preset", "ultrafast"]


def decoded(path) -> np.ndarray:
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


@pytest.fixture(scope="module")
def renders(media, cli_models, tmp_path_factory):
    """``render(case, overlap)``: the output path of that command (rendered once per module)."""
    models, base = cli_models
    folder = tmp_path_factory.mktemp("stages")
    done = {}

    def render(case: str, overlap: bool):
        if (case, overlap) not in done:
            out = folder / f"{case}-{'staged' if overlap else 'sequential'}.mp4"
            args = ["--models", models, "--base-model", base, "--steps", "2", "--guidance", "1.0", "--batch-size",
                    "4", "--chunk-size", "4", "--no-progress", "--device", "cpu", *LOSSLESS]
            args += [] if overlap else ["--no-overlap"]
            assert main([str(a) for a in CASES[case](media) + ["-o", out, *args]]) == 0
            done[case, overlap] = out
        return done[case, overlap]

    return render


@pytest.mark.parametrize("case", list(CASES))
def test_staged_output_equals_sequential_frame_for_frame(case, renders):
    staged, sequential = decoded(renders(case, True)), decoded(renders(case, False))
    assert staged.shape[0] == FRAMES and staged.shape == sequential.shape
    np.testing.assert_array_equal(staged, sequential)


@pytest.mark.parametrize("case, overlap, working", [
    ("run-side-by-side", True, ("load", "decode", "detect", "smirk", "render", "paste", "encode")),
    ("edit", False, ("load", "decode", "detect", "arcface", "render", "paste", "encode")),  # no SMIRK: absolute
])
def test_stage_recorder_figures_are_consistent(case, overlap, working, media, fast_args, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="retarget.jobs.stage_times")
    argv = CASES[case](media) + ["-o", tmp_path / "out.mp4", *fast_args] + ([] if overlap else ["--no-overlap"])
    assert main([str(a) for a in argv]) == 0
    record = last_job()
    command = case.split("-")[0]
    assert record is not None and record.command == command
    summary = record.summary()
    assert summary["frames"] == FRAMES  # every frame of the clip finished once
    wall = summary["wall_s"]
    assert set(summary["busy_s"]) == set(STAGES)
    for stage, busy in summary["busy_s"].items():
        assert 0 <= busy <= wall, (stage, busy, wall)
        assert busy > 0 or stage not in working, stage
    assert 0 < summary["first_frame_s"] <= wall
    parts = summary["load_parts_s"]  # what the load stage was spent on, in order, adding up to it
    assert list(parts) == ["face_models", "imports", "unet", "adapters", "encoder", "vae", "to_device", "setup",
                           "options", "warm_up"]
    assert parts["warm_up"] == 0  # on the CPU without --compile there is nothing to warm up
    assert all(seconds >= 0 for seconds in parts.values()) and parts["unet"] > 0
    load = summary["busy_s"]["load"]
    # each figure is rounded to 4 decimals: the sum may pass the rounded total by up to 5e-5 per part
    assert -1e-3 <= load - sum(parts.values()) <= 0.05 + 0.05 * load, (load, parts)
    assert summary["frames_per_s"] == pytest.approx(FRAMES / wall, rel=1e-2)
    assert summary["device"] == "cpu" and summary["dtype"] == "fp32" and summary["peak_gpu_mib"] is None
    assert summary["peak_host_mib"] > 0
    batches = summary["batches"]  # chunks of 4 frames, batches of 4: one batch per chunk (each has a face)
    assert batches["count"] == FRAMES // 4 and summary["compiles_in_render"] == 0
    assert 0 < batches["first_s"] <= summary["busy_s"]["render"] and 0 < batches["max_later_s"] <= wall
    assert batches["mean_later_s"] <= batches["max_later_s"]
    json.dumps(summary)
    assert f"stages {command}: {FRAMES} frames in" in caplog.text


def test_worker_failure_is_one_line_keeps_finished_chunks_and_resumes(renders, media, fast_args, tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "out.mp4"
    argv = CASES["edit"](media) + ["-o", out, *fast_args, *LOSSLESS]
    original = ChunkedRender.save_chunk
    threads = []

    def failing(self, index, frames, **kwargs):
        threads.append(threading.current_thread().name)
        if index == 1:
            raise RuntimeError("disk full while saving")
        return original(self, index, frames, **kwargs)

    monkeypatch.setattr(ChunkedRender, "save_chunk", failing)
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "RuntimeError: disk full while saving")
    assert all(name.startswith("retarget-finish") for name in threads)  # saved on the finish thread
    manifest = json.loads((tmp_path / f"out.mp4{WORK_SUFFIX}" / "manifest.json").read_text())
    # chunk 1 failed; chunk 2 had rendered and been handed to the finish thread before the failure was seen, so it
    # was saved as well
    assert sorted(manifest["chunks"]) == ["0", "2"] and not out.exists()
    monkeypatch.setattr(ChunkedRender, "save_chunk", original)
    saved = []
    monkeypatch.setattr(ChunkedRender, "save_chunk",
                        lambda self, index, frames, **kw: saved.append(index) or original(self, index, frames, **kw))
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert saved == [1]  # chunks 0 and 2 resumed from disk
    np.testing.assert_array_equal(decoded(out), decoded(renders("edit", True)))


def test_prefetch_failure_is_one_line(media, fast_args, tmp_path, capsys, monkeypatch):
    original = ClipScan.frames_of_span

    def failing(self, reader, start, stop, times=None):
        if start >= 4:
            raise InputError(f"{reader.path}: frame {start} cannot be decoded")
        return original(self, reader, start, stop, times)

    monkeypatch.setattr(ClipScan, "frames_of_span", failing)
    out = tmp_path / "out.mp4"
    code, err = run_cli(CASES["run-side-by-side"](media) + ["-o", out, *fast_args], capsys)
    assert_one_line_error(code, err, "frame 4 cannot be decoded")
    assert not out.exists()


def test_pipeline_load_failure_stops_a_long_scan_early(media, fast_args, cli_models, tmp_path, capsys, monkeypatch):
    import shutil

    from retarget.jobs.session import RenderSession

    models, _ = cli_models
    broken = tmp_path / "models"
    shutil.copytree(models, broken)
    # A real torch file (its header passes the quick check) that is not an expression adapter: the full load fails.
    torch.save({"something": torch.zeros(2)}, broken / "exp_adapter" / "exp_adapter.bin")
    chunks, count = 2, 120
    clip = write_clip(tmp_path / "long.mp4", moving_face_frames(count), Fraction(25), audio=False)
    sessions, scanned, failed_at = [], [], []
    start_loading = RenderSession.start_loading
    monkeypatch.setattr(RenderSession, "start_loading",
                        lambda self, *a, **k: sessions.append(self) or start_loading(self, *a, **k))
    detector = FaceModels.detector.fget

    class WaitingDetector:  # the first chunk waits for the background load to fail, whatever the machine's speed
        def __init__(self, inner):
            self.inner = inner

        def detect_many(self, images):
            while not failed_at:
                if sessions and sessions[0]._load_error is not None:
                    failed_at.append(time.perf_counter())
                time.sleep(0.01)
            scanned.append(len(images))
            return self.inner.detect_many(images)

        def detect(self, image):
            return self.inner.detect(image)

    monkeypatch.setattr(FaceModels, "detector", property(lambda self: WaitingDetector(detector(self))))
    args = list(fast_args)
    args[args.index("--models") + 1] = str(broken)
    args[args.index("--chunk-size") + 1] = str(chunks)
    code, err = run_cli(["run", clip, "--identity", media["photo"], "-o", tmp_path / "out.mp4", *args], capsys)
    stopped = time.perf_counter()
    assert_one_line_error(code, err, "exp_adapter.bin")
    assert len(scanned) <= 3  # the chunk being read, and at most two decoded ahead, of 60
    assert stopped - failed_at[0] < 10


def test_scan_keeps_the_frames_it_decoded(media, cli_models):
    models, _ = cli_models
    reader = VideoReader(media["clip"])
    scan = scan_clip(reader, FaceModels(models, device="cpu"), chunk_size=4, progress=False, frames=(2, 9),
                     keep_frames=True)
    assert scan.frames.shape == (7, 120, 160, 3) and scan.first == 2
    np.testing.assert_array_equal(scan.frames, frames_of_span(reader, 2, 9))
    view = scan.frames_of_span(reader, 3, 7)
    assert np.shares_memory(view, scan.frames)  # no decode, no copy
    np.testing.assert_array_equal(scan.frames_of_span(reader, 8, 11), frames_of_span(reader, 8, 11))  # outside


def test_runner_orders_bounds_and_propagates():
    events, lock, live, most = [], threading.Lock(), [0], [0]

    def prepare(item):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        return item * 10

    def process(item, prepared):
        return prepared + 1

    def finish(item, prepared, result):
        events.append((item, result))
        with lock:
            live[0] -= 1

    for overlap in (True, False):
        events.clear()
        assert run_stages(range(20), prepare, process, finish, overlap=overlap) == 20
        assert events == [(i, i * 10 + 1) for i in range(20)]
    assert most[0] <= 3  # at most three items held at once

    def broken(item, prepared, result):
        if item == 3:
            raise ValueError("item 3")

    started = []
    with pytest.raises(ValueError, match="item 3"):
        run_stages(range(100), lambda i: started.append(i) or i, lambda i, p: p, broken)
    assert max(started) <= 6  # stopped within the items in flight


def test_a_stop_in_done_still_saves_every_processed_item():
    # The web app's cancel and Ctrl-C arrive in ``done`` (the progress bar) or in ``process``: every item already
    # processed (a rendered chunk) is still finished (saved), whatever the finish thread was doing at that moment.
    for stop_at in range(4):
        processed, finished = [], []

        def process(item, prepared):
            processed.append(item)
            return item

        def finish(item, prepared, result):
            time.sleep(0.05 if item == 0 else 0)  # the finish thread lags behind
            finished.append(item)

        def done(item):
            if item == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_stages(range(10), lambda i: i, process, finish, done=done)
        assert finished == processed and len(processed) == stop_at + 2


@pytest.mark.parametrize("case", ["run", "edit"])
def test_compile_happens_during_the_scan_and_changes_nothing(case, media, fast_args, tmp_path, monkeypatch):
    """With --compile and overlapped stages, where the session warms up (on CUDA; forced here on the CPU), the
    loading thread compiles the first batch's graph (a one-step stand-in batch) while the clip is scanned; the
    render reuses it, and the output equals the sequential order's, which compiles at its first batch."""
    from torch._dynamo.testing import CompileCounter

    from retarget.jobs import session as session_module
    from retarget.pipeline import ExpressionPipeline

    compile_threads, counters = [], []
    original = ExpressionPipeline.compile

    def counting_compile(self, **kwargs):
        counter = CompileCounter()
        counters.append(counter)

        def backend(graph, example_inputs):
            compile_threads.append(threading.current_thread().name)
            return counter(graph, example_inputs)

        original(self, backend=backend)

    monkeypatch.setattr(ExpressionPipeline, "compile", counting_compile)
    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)  # as on CUDA
    outputs = {}
    for order in ("staged", "sequential"):
        torch._dynamo.reset()
        out = tmp_path / f"{order}.mp4"
        argv = CASES[case](media) + ["-o", out, *fast_args, *LOSSLESS, "--compile"]
        assert main([str(a) for a in argv + ([] if order == "staged" else ["--no-overlap"])]) == 0
        outputs[order] = decoded(out)
        summary = last_job().summary()
        parts = summary["load_parts_s"]
        assert (parts["warm_up"] > 0) == (order == "staged"), (order, parts)
        # the job's record says where the compile fell: none during the render after the warm-up, else the first batch
        assert summary["compiles_in_render"] == (0 if order == "staged" else 1), (order, summary)
    torch._dynamo.reset()
    assert [c.frame_count for c in counters] == [1, 1]  # one graph per process-like job, never recompiled
    assert compile_threads == ["retarget-load", "MainThread"]  # staged: during the scan; sequential: at render
    assert_same_render(outputs["staged"], outputs["sequential"])


def test_the_warm_up_is_for_gpus():
    from retarget.jobs.session import overlaps_scan

    assert overlaps_scan("cuda") and overlaps_scan("cuda:1") and overlaps_scan(torch.device("cuda", 0))
    assert not overlaps_scan("cpu") and not overlaps_scan(torch.device("cpu")) and not overlaps_scan("mps")


@pytest.mark.parametrize("mode, cuda_graphs", [("default", False), ("max-autotune-no-cudagraphs", False),
                                               ("reduce-overhead", True), ("max-autotune", True)])
def test_no_warm_up_on_the_loading_thread_with_cuda_graphs(cli_models, monkeypatch, mode, cuda_graphs):
    """torch records CUDA graphs per thread: graphs recorded by a warm-up on the loading thread would be recorded
    again by the rendering thread (and some torch releases fail there), so compile modes with CUDA graphs skip it."""
    from retarget.jobs import session as session_module
    from retarget.jobs.options import JobOptions
    from retarget.pipeline import ExpressionPipeline

    models, base = cli_models
    warm_ups = []
    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)  # as on CUDA
    monkeypatch.setattr(ExpressionPipeline, "warm_up",
                        lambda self, *args, **kwargs: warm_ups.append(threading.current_thread().name))
    options = JobOptions(models=models, base_model=str(base), progress=False, compile=True, compile_mode=mode)
    session = session_module.RenderSession(options).load(expressions=False, background=True, warm_up=(2, "shared"))
    assert session.pipeline.uses_cuda_graphs == cuda_graphs
    assert warm_ups == ([] if cuda_graphs else ["retarget-load"])


def test_a_failed_warm_up_only_warns(media, fast_args, tmp_path, monkeypatch, caplog):
    """The warm-up is an optimisation: if it fails (say, out of GPU memory beside the scan), the job goes on cold,
    with the same output."""
    from retarget.jobs import session as session_module
    from retarget.pipeline import ExpressionPipeline

    def failing(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\n(details)")

    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)
    monkeypatch.setattr(ExpressionPipeline, "warm_up", failing)
    out = tmp_path / "cold.mp4"
    with caplog.at_level(logging.WARNING, logger="retarget.jobs.session"):
        assert main([str(a) for a in CASES["run"](media) + ["-o", out, *fast_args, *LOSSLESS]]) == 0
    assert "warm-up skipped (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)" in caplog.text
    monkeypatch.undo()
    reference = tmp_path / "reference.mp4"
    assert main([str(a) for a in CASES["run"](media) + ["-o", reference, *fast_args, *LOSSLESS]]) == 0
    assert_same_render(decoded(out), decoded(reference))


EXIT_DURING_LOAD = """
import sys, threading
import retarget.pipeline as pipeline
from retarget.jobs.options import JobOptions
from retarget.jobs.session import EXITING, RenderSession

models, base, record = sys.argv[1:4]
started = threading.Event()
load_unet, load_encoder = pipeline.load_unet, pipeline.load_identity_encoder_model

def slow_unet(*args, **kwargs):  # the load is inside torch's work when the program exits
    started.set()
    exiting = EXITING.wait(60)
    with open(record, "a") as f:
        f.write("unet, exiting\\n" if exiting else "unet\\n")
    return load_unet(*args, **kwargs)

def encoder(*args, **kwargs):
    with open(record, "a") as f:
        f.write("encoder\\n")
    return load_encoder(*args, **kwargs)

pipeline.load_unet, pipeline.load_identity_encoder_model = slow_unet, encoder
RenderSession(JobOptions(models=models, base_model=base, device="cpu")).start_loading()
assert started.wait(60)
sys.exit(3)  # e.g. a job that failed on its photo while the pipeline loads
"""


def test_exiting_during_a_background_load_stops_it_at_its_next_step(cli_models, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    models, base = cli_models
    record = tmp_path / "record.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", EXIT_DURING_LOAD, str(models), str(base), str(record)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]  # the program's own status: no abort at exit
    assert "terminate called" not in done.stderr
    # the exit waited for the load (the thread saw it), which stopped after the UNet instead of loading the rest
    assert record.read_text().splitlines() == ["unet, exiting"]


def test_an_item_counts_as_done_once_it_is_saved_not_after_the_next_one():
    """Overlapped, ``done`` follows the item's finish on the finish thread: a progress bar counts a saved chunk
    while the next one is still being processed (it used to wait for that processing to end)."""
    reported = threading.Event()
    waited = []

    def process(item, prepared):
        if item == 1:  # the second chunk "renders" until the first has been counted (or 5 s pass)
            waited.append(reported.wait(5))
        return item

    def done(item):
        if item == 0:
            reported.set()

    assert run_stages(range(3), lambda i: i, process, lambda *args: None, done=done) == 3
    assert waited == [True]
