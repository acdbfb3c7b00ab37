"""``batch`` in stages: the next clip's face scan runs while a clip renders (on CUDA; forced on here), the pipeline
loads during the first clip's scan, a stop ends the scan ahead and frees its output, and a load failure stops the
batch once."""

from __future__ import annotations

import json
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from retarget.cli import main
from retarget.faces.models import FaceModels
from retarget.jobs import edit as edit_module
from retarget.jobs import run as run_module
from retarget.jobs import session as session_module
from retarget.jobs.common import MEMORY_BUDGET_GIB
from retarget.jobs.scanned import ScannedClip
from retarget.jobs.stage_times import last_job
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video import work_lock
from retarget.video.reader import VideoReader
from tests.cli.conftest import FRAMES, RATE, copy_to
from tests.cli.test_errors_batch_weights import assert_one_line_error, run_cli
from tests.cli.test_stages import LOSSLESS
from tests.renders import assert_same_render

SHORT = 8
WAIT_S = 60  # a generous bound for the hand-offs below; they take milliseconds


def decoded(path) -> np.ndarray:
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


def locks_held_under(folder: Path) -> list[str]:
    """The work folders under ``folder`` whose lock this process still holds."""
    return [path for _, path in work_lock._held if Path(path).is_relative_to(folder.resolve())]


@pytest.fixture
def folder(media, tmp_path):
    """An input folder: ``a.mp4`` (the 12-frame clip), ``b.mp4`` (8 frames, the motion reversed), ``c.mp4`` (a copy
    of ``a``)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    write_clip(inputs / "b.mp4", moving_face_frames(SHORT)[::-1].copy(), RATE)
    copy_to(media["clip"], inputs, "c.mp4")
    return inputs


class Recorder:
    """Wraps the scan phase of ``run``/``edit`` and :meth:`ScannedClip.render` to record, in order, which clip is
    scanned (and on which thread, with which memory budget) and rendered. With ``hold``, the render of each clip
    but the last waits until the next clip's scan has started (it fails after :data:`WAIT_S` seconds): a batch that
    did not scan ahead would never start it."""

    def __init__(self, monkeypatch, hold: bool):
        self.events: list[tuple] = []
        self.budgets: list[float] = []
        self.started: dict[str, threading.Event] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        for module, name in ((run_module, "scan_run"), (edit_module, "scan_edit")):
            monkeypatch.setattr(module, name, self.scanning(getattr(module, name)))
        render = ScannedClip.render

        def rendering(clip):
            name = Path(clip.output).name
            self.note("render", name)
            position = self.order.index(name)
            try:
                if hold and position + 1 < len(self.order):
                    assert self.event(self.order[position + 1]).wait(WAIT_S), "the next clip was not scanned ahead"
                return render(clip)
            finally:
                clip.release()  # (render releases it too; this covers the failed assertion)
                self.note("rendered", name)

        monkeypatch.setattr(ScannedClip, "render", rendering)

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(name, threading.Event())

    def note(self, *event) -> None:
        with self.lock:
            self.events.append(event)

    def scanning(self, scan):
        def wrapped(video, given, output, options, /, **kwargs):
            name = Path(output).name
            self.note("scan", name, threading.current_thread().name)
            self.budgets.append(options.memory_budget)
            self.event(name).set()
            return scan(video, given, output, options, **kwargs)

        return wrapped


@pytest.mark.parametrize("command", ["run", "edit"])
def test_scanning_ahead_overlaps_the_renders_and_changes_no_frame(command, media, fast_args, folder, tmp_path,
                                                                   monkeypatch):
    source = ["--identity", media["photo"]] if command == "run" else ["--expression", media["photo"]]
    names = ["a.mp4", "b.mp4", "c.mp4"]

    def argv(out, *extra):
        return [str(a) for a in ["batch", folder, "-o", out, *source, *fast_args, *LOSSLESS, *extra]]

    plain = Recorder(monkeypatch, hold=False)
    plain.order = names
    assert main(argv(tmp_path / "one-by-one")) == 0  # on the CPU: no scan ahead
    assert [e[:2] for e in plain.events] == [(kind, n) for n in names for kind in ("scan", "render", "rendered")]
    assert plain.budgets == [MEMORY_BUDGET_GIB] * 3
    record = last_job().summary()
    assert record["command"] == "batch" and record["frames"] == FRAMES + SHORT + FRAMES
    assert record["busy_s"]["render"] > 0 and record["busy_s"]["load"] > 0 and record["busy_s"]["detect"] > 0

    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)  # as on CUDA
    ahead = Recorder(monkeypatch, hold=True)
    ahead.order = names
    assert main(argv(tmp_path / "ahead")) == 0
    scans = [e for e in ahead.events if e[0] == "scan"]
    assert [e[1] for e in scans] == names and all(e[2].startswith("retarget-scan") for e in scans)
    for earlier, later in zip(names, names[1:]):  # the next scan began before this render ended
        assert ahead.events.index(("scan", later, scans[names.index(later)][2])) < \
            ahead.events.index(("rendered", earlier))
    assert ahead.budgets == [MEMORY_BUDGET_GIB / 2] * 3  # two clips in memory at once share the budget
    assert last_job().summary()["frames"] == FRAMES + SHORT + FRAMES

    sequential = tmp_path / "sequential"
    assert main(argv(sequential, "--no-overlap")) == 0
    for name in names:
        frames = decoded(tmp_path / "ahead" / name)
        assert len(frames) == (SHORT if name == "b.mp4" else FRAMES)
        assert_same_render(frames, decoded(tmp_path / "one-by-one" / name))
        assert_same_render(frames, decoded(sequential / name))
    assert sorted(p.name for p in (tmp_path / "ahead").iterdir()) == names  # no work folder, no failures.jsonl


def test_a_failed_scan_ahead_is_that_clip_s_failure(media, fast_args, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)
    copy_to(media["corrupt"], folder, "b.mp4")  # the clip scanned while a.mp4 renders cannot be read
    outputs = tmp_path / "out"
    code, _ = run_cli(["batch", folder, "-o", outputs, "--identity", media["photo"], *fast_args], capsys)
    assert code == 1
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mp4", "c.mp4", "failures.jsonl"]
    records = [json.loads(line) for line in (outputs / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["file"].endswith("b.mp4") and records[0]["type"] == "InputError"
    assert locks_held_under(tmp_path) == []


def test_a_stop_ends_the_scan_ahead_and_frees_its_output(media, fast_args, tmp_path, monkeypatch):
    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    write_clip(inputs / "b.mp4", moving_face_frames(48), RATE)  # 12 chunks of 4: the stop comes after the first
    rendering, stopped = threading.Event(), threading.Event()
    chunks_of_b = []
    detector = FaceModels.detector.fget

    class HeldDetector:  # once a.mp4 renders, b.mp4's first chunk waits for the stop
        def __init__(self, inner):
            self.inner = inner

        def detect_many(self, images):
            if rendering.is_set():
                assert stopped.wait(WAIT_S)
                chunks_of_b.append(len(images))
            return self.inner.detect_many(images)

        def detect(self, image):
            return self.inner.detect(image)

    monkeypatch.setattr(FaceModels, "detector", property(lambda self: HeldDetector(detector(self))))
    outcomes = []
    scan_run = run_module.scan_run

    def recorded(video, *args, **kwargs):
        try:
            clip = scan_run(video, *args, **kwargs)
        except BaseException as error:
            outcomes.append((Path(video).name, type(error).__name__))
            raise
        outcomes.append((Path(video).name, "scanned"))
        return clip

    monkeypatch.setattr(run_module, "scan_run", recorded)

    def interrupted(clip):
        rendering.set()
        try:
            raise KeyboardInterrupt
        finally:
            clip.release()
            stopped.set()

    monkeypatch.setattr(ScannedClip, "render", interrupted)
    outputs = tmp_path / "out"
    code = main([str(a) for a in ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]])
    assert code == 130  # interrupted
    assert outcomes == [("a.mp4", "scanned"), ("b.mp4", "_ScanStopped")]
    assert len(chunks_of_b) <= 3  # the chunk being read, and at most two decoded ahead, of 12
    assert locks_held_under(tmp_path) == [] and not outputs.exists()  # no lock held, no work folder, no folder


def test_a_pipeline_that_fails_to_load_stops_the_batch_once(media, fast_args, cli_models, folder, tmp_path, capsys):
    import shutil

    models, _ = cli_models
    broken = tmp_path / "models"
    shutil.copytree(models, broken)
    # A real torch file (its header passes the quick check) that is not an expression adapter: the load fails on
    # its thread, during the first clip's scan.
    torch.save({"something": torch.zeros(2)}, broken / "exp_adapter" / "exp_adapter.bin")
    args = list(fast_args)
    args[args.index("--models") + 1] = str(broken)
    outputs = tmp_path / "out"
    code, err = run_cli(["batch", folder, "-o", outputs, "--identity", media["photo"], *args], capsys)
    assert_one_line_error(code, err, "exp_adapter.bin")
    assert not outputs.exists()  # no output, no failures.jsonl (the weights, not the clips, are at fault)
    assert locks_held_under(tmp_path) == []


def test_rates_of_the_clips_are_their_own(media, fast_args, tmp_path, monkeypatch):
    """Clips of different frame rates scanned ahead keep their own timing."""
    monkeypatch.setattr(session_module, "overlaps_scan", lambda device: True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_clip(inputs / "a.mp4", moving_face_frames(SHORT), Fraction(25))
    write_clip(inputs / "b.mp4", moving_face_frames(SHORT)[::-1].copy(), Fraction(24000, 1001))
    outputs = tmp_path / "out"
    assert main([str(a) for a in ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]]) == 0
    assert VideoReader(outputs / "a.mp4").info.frame_rate == Fraction(25)
    assert VideoReader(outputs / "b.mp4").info.frame_rate == Fraction(24000, 1001)
