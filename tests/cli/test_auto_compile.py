"""Compiling by default for long jobs on a GPU: ``--compile`` and ``--no-compile`` decide when given; else a job
of at least AUTO_COMPILE_FRAMES frames on CUDA compiles where Triton can build the kernels, and each command tells
the session how many frames it renders."""

from __future__ import annotations

import pytest

from retarget.cli import main
from retarget.jobs import session as session_module
from retarget.jobs import weights
from retarget.jobs.batch import frames_in
from retarget.jobs.session import AUTO_COMPILE_FRAMES, AUTO_COMPILE_FRAMES_CACHED, compile_chosen
from retarget.video.probe import probe_video
from tests.cli.conftest import FRAMES, copy_to
from tests.cli.test_errors_batch_weights import assert_one_line_error, run_cli

READY = weights.Check("--compile", True, "Triton and /usr/bin/gcc")
NO_TRITON = weights.Check("--compile", None, "Triton is not installed: --compile would render without compiling")


def test_the_flag_decides_else_the_device_the_length_and_the_compiler(monkeypatch):
    monkeypatch.setattr(weights, "compile_check", lambda gpu: READY)
    assert compile_chosen(True, "cpu", None) is True  # --compile: also on the CPU, whatever the length
    assert compile_chosen(False, "cuda:0", 10**6) is False  # --no-compile
    assert compile_chosen(None, "cpu", 10**6) is False  # automatic: never on the CPU
    assert compile_chosen(None, "cuda:0", AUTO_COMPILE_FRAMES - 1) is False
    assert compile_chosen(None, "cuda:0", None) is False  # length unknown
    assert compile_chosen(None, "cuda:0", AUTO_COMPILE_FRAMES) is True
    assert compile_chosen(None, "cuda", 10**5) is True
    monkeypatch.setattr(weights, "compile_check", lambda gpu: NO_TRITON)
    assert compile_chosen(None, "cuda:1", 10**6) is False  # it could not build its kernels: no warning per job


def test_a_graph_in_the_compile_cache_lowers_the_threshold(monkeypatch):
    monkeypatch.setattr(weights, "compile_check", lambda gpu: READY)
    assert AUTO_COMPILE_FRAMES_CACHED < AUTO_COMPILE_FRAMES
    assert compile_chosen(None, "cuda:0", AUTO_COMPILE_FRAMES_CACHED, cached=True) is True
    assert compile_chosen(None, "cuda:0", AUTO_COMPILE_FRAMES_CACHED - 1, cached=True) is False
    assert compile_chosen(None, "cuda:0", AUTO_COMPILE_FRAMES_CACHED, cached=False) is False
    assert compile_chosen(None, "cpu", 10**6, cached=True) is False
    assert compile_chosen(False, "cuda:0", 10**6, cached=True) is False


@pytest.fixture
def decisions(monkeypatch):
    """Every ``compile_chosen(option, device, frames)`` a job asks, answered as the real function would on a GPU
    with Triton (the device is the CPU here): long jobs compile, and ``ExpressionPipeline.compile`` is recorded
    instead of compiling."""
    from retarget.pipeline import ExpressionPipeline

    asked, compiled = [], []

    def decide(option, device, frames, cached=False):
        asked.append((option, frames))
        return bool(option) if option is not None else frames is not None and frames >= AUTO_COMPILE_FRAMES

    monkeypatch.setattr(session_module, "compile_chosen", decide)
    monkeypatch.setattr(ExpressionPipeline, "compile", lambda self, **kw: compiled.append(kw.get("mode")))
    return asked, compiled


def test_each_command_tells_how_many_frames_it_renders(decisions, media, fast_args, tmp_path):
    asked, compiled = decisions
    clip, photo = str(media["clip"]), str(media["photo"])
    assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / "run.mp4"), *fast_args]) == 0
    rate = probe_video(media["clip"]).frame_rate
    assert main(["edit", clip, "--expression", photo, "-o", str(tmp_path / "edit.mp4"), "--start",
                 str(float(3 / rate)), *fast_args]) == 0  # frames 3..11
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        copy_to(media["clip"], folder, name)
    assert main(["batch", str(folder), "-o", str(tmp_path / "out"), "--identity", photo, *fast_args]) == 0
    assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / "off.mp4"), "--no-compile",
                 *fast_args]) == 0
    assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / "on.mp4"), "--compile", *fast_args]) == 0
    assert asked == [(None, FRAMES), (None, FRAMES - 3), (None, 2 * FRAMES), (False, FRAMES), (True, FRAMES)]
    assert compiled == [None]  # only --compile: these jobs are short


def test_a_long_job_compiles_by_default_and_says_why(decisions, media, fast_args, tmp_path, monkeypatch, caplog):
    asked, compiled = decisions
    monkeypatch.setattr(session_module, "AUTO_COMPILE_FRAMES", FRAMES)  # the clip counts as long
    monkeypatch.setattr(session_module, "compile_chosen",
                        lambda option, device, frames, cached: (asked.append((option, frames)), frames >= FRAMES)[1])
    with caplog.at_level("INFO", logger="retarget.pipeline.compile"):
        assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(tmp_path / "r.mp4"),
                     *fast_args]) == 0
    assert asked == [(None, FRAMES)] and compiled == [None]
    notes = [r.getMessage() for r in caplog.records if r.name == "retarget.pipeline.compile"]
    assert notes == [f"compiling the UNet: {FRAMES} frames to render (--no-compile renders without)"]


def test_the_job_asks_the_compile_cache_for_its_first_batch(decisions, media, fast_args, tmp_path, monkeypatch,
                                                            caplog):
    """The job that loads the pipeline asks whether this machine's compile cache holds the graph of its first batch
    (its rows, guidance, reference kind and compile mode), and a cached graph lowers the threshold: here a clip
    counts as long enough only with it. With --no-compile or --compile (or a --compile-mode) nothing is asked."""
    from retarget.pipeline import ExpressionPipeline

    asked, compiled = decisions
    looked_up = []

    def compiled_before(self, rows, guidance_scale, reference, mode=None, **kw):
        looked_up.append((rows, guidance_scale, reference, mode))
        return True

    monkeypatch.setattr(ExpressionPipeline, "compiled_before", compiled_before)
    monkeypatch.setattr(session_module, "compile_chosen", lambda option, device, frames, cached: (
        asked.append((option, frames, cached)), option if option is not None else cached and frames >= FRAMES)[1])
    clip, photo = str(media["clip"]), str(media["photo"])
    with caplog.at_level("INFO", logger="retarget.pipeline.compile"):
        assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / "r.mp4"), *fast_args,
                     "--batch-size", "3", "--guidance", "2"]) == 0
    assert looked_up == [(3, 2.0, True, None)] and asked == [(None, FRAMES, True)] and compiled == [None]
    notes = [r.getMessage() for r in caplog.records if r.name == "retarget.pipeline.compile"]
    assert notes == [f"compiling the UNet: {FRAMES} frames to render, its graph in this machine's compile cache "
                     "(--no-compile renders without)"]
    assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / "n.mp4"), "--no-reference", *fast_args]) == 0
    assert looked_up[1] == (4, 1.0, False, None)
    for flag in ("--no-compile", "--compile", "--compile-mode=max-autotune-no-cudagraphs"):  # the last implies --compile
        assert main(["run", clip, "--identity", photo, "-o", str(tmp_path / f"{flag}.mp4"), flag, *fast_args]) == 0
    assert len(looked_up) == 2


def test_frames_in_adds_up_probes_until_enough(media, tmp_path):
    broken = media["corrupt"]
    clips = [broken, media["clip"], media["clip"], tmp_path / "missing.mp4"]
    assert frames_in(clips, 10**6) == 2 * FRAMES  # files that cannot be probed count none
    assert frames_in(clips, 1) == FRAMES  # enough after the first clip: the second is not opened
    assert frames_in([], 1) == 0


def test_no_compile_with_a_compile_mode_is_one_line(media, fast_args, tmp_path, capsys):
    code, err = run_cli(["run", media["clip"], "--identity", media["photo"], "-o", tmp_path / "x.mp4",
                         "--compile-mode", "reduce-overhead", "--no-compile", *fast_args], capsys)
    assert_one_line_error(code, err, "use either --compile-mode or --no-compile")
    code, err = run_cli(["run", media["clip"], "--identity", media["photo"], "-o", tmp_path / "x.mp4",
                         "--no-compile", "--compile", *fast_args], capsys)
    assert_one_line_error(code, err, "use either --compile or --no-compile")
    assert not (tmp_path / "x.mp4").exists()
    code = main(["extract", str(media["clip"]), "-o", str(tmp_path / "m.npz"), "--no-compile", *fast_args[:2],
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().err.strip().splitlines()[:1] == [
        "retarget extract: --no-compile does nothing here (rendering options of run, edit and batch)"]
