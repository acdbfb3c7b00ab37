"""``retarget eval``: what the arguments alone decide is said before any face model loads or any clip is scanned,
and a ``--start/--end`` render has only its range of the driving clip decoded, with the scores of a scan of the
whole clip sliced to that range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retarget.cli import main
from retarget.evaluation import clip as clip_module
from retarget.evaluation.clip import EvalInputs, evaluate_clip
from retarget.evaluation.report import check_report_dir
from retarget.errors import InputError
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.reader import VideoReader
from tests.cli.conftest import BLANK, FRAMES, RATE


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a face model loads or a clip is scanned."""
    from retarget.faces import models as face_models

    def refuse(*args, **kwargs):
        raise AssertionError("a face model was loaded or a clip scanned")

    monkeypatch.setattr(face_models.FaceModels, "load", refuse)
    monkeypatch.setattr(clip_module, "scan_clip", refuse)


@pytest.mark.parametrize("case, message", [
    ("unwritable_report", "/proc/rep: cannot create the report folder in /proc"),
    ("junk_motion", "junk.npz: not a retarget motion file"),
    ("photo_not_an_image", "notes.jpg: not a readable image file"),
    ("source_not_a_video", "notes.jpg"),
])
def test_argument_errors_come_before_any_model_or_scan(tmp_path, capsys, media, face_models_dir, nothing_loads,
                                                       case, message):
    report = tmp_path / "rep"
    args = [media["clip"], "--driving", media["clip"], "--identity", media["photo"]]
    if case == "unwritable_report":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc (a folder nobody can create files in, whatever the user)")
        report = Path("/proc/rep")
    elif case == "junk_motion":
        args += ["--motion", media["junk_motion"]]
    elif case == "photo_not_an_image":
        args[-1] = media["not_image"]
    elif case == "source_not_a_video":
        args = [media["clip"], "--original", media["clip"], "--driving", media["not_image"]]
    code = main(["eval", *map(str, args), "-o", str(report), "--models", str(face_models_dir), "--device", "cpu",
                 "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("retarget: error:"), err
    assert message in lines[0]
    assert not report.exists()


def test_report_folder_probe_leaves_nothing_behind(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "old.txt").write_text("x")
    assert check_report_dir(existing) == existing and [p.name for p in existing.iterdir()] == ["old.txt"]
    assert check_report_dir(tmp_path / "new") == tmp_path / "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    with pytest.raises(InputError, match="folder does not exist"):
        check_report_dir(tmp_path / "missing" / "rep")


#: The range of the tests below: --start 2 frames, --end 9 frames (frames [2, 9) of the 12-frame clip).
LO, HI = 2, 9


@pytest.fixture(scope="module")
def range_output(tmp_path_factory):
    """A 'render' of the driving frames [2, 9): the clip's own pictures."""
    folder = tmp_path_factory.mktemp("range")
    return write_clip(folder / "range.mp4", moving_face_frames(FRAMES, blank=BLANK)[LO:HI], RATE, audio=False)


def _decoded_frames(monkeypatch) -> dict[str, int]:
    """Counts, by file name, of the frames every VideoReader decodes from now on."""
    counts: dict[str, int] = {}
    original = VideoReader.iter_frames

    def counting(self, start=None, end=None):
        for item in original(self, start, end):
            counts[self.path.name] = counts.get(self.path.name, 0) + 1
            yield item

    monkeypatch.setattr(VideoReader, "iter_frames", counting)
    return counts


def _whole_then_sliced(real):
    """``scan_clip`` that scans the whole clip, then keeps only the frames ``[first, stop)`` asked for."""

    def scan(reader, models, face_index=0, *, frames=None, **kwargs):
        result = real(reader, models, face_index, **kwargs)
        if frames is not None:
            outside = np.ones(len(result.valid), bool)
            outside[frames[0]:frames[1]] = False
            for array in (result.keypoints, result.expressions):
                array[outside] = 0
            result.valid[outside] = False
            result.detected[outside] = False
        return result

    return scan


@pytest.mark.parametrize("smooth", ["kalman", "none"])
def test_range_scans_only_its_frames_with_the_scores_of_the_whole_clip_sliced(media, random_face_models,
                                                                               range_output, monkeypatch, smooth):
    """The driving clip's frames outside [2, 9) are never decoded (2 passes x 7 frames, not 2 x 12), and every
    per-frame number and summary score equals those of a scan of all 12 frames sliced to [2, 9)."""
    inputs = EvalInputs(range_output, driving=media["clip"], identity=media["photo"], start=float(LO / RATE),
                        end=float(HI / RATE), smooth=smooth)
    decoded = _decoded_frames(monkeypatch)
    ranged = evaluate_clip(inputs, random_face_models, progress=False)
    assert decoded == {"range.mp4": 2 * (HI - LO), "clip.mp4": 2 * (HI - LO)}
    decoded.clear()
    monkeypatch.setattr(clip_module, "scan_clip", _whole_then_sliced(clip_module.scan_clip))
    sliced = evaluate_clip(inputs, random_face_models, progress=False)
    assert decoded["clip.mp4"] == FRAMES + (HI - LO)  # the whole clip scanned, the range's pixels read

    np.testing.assert_array_equal(ranged.reference_index, np.arange(LO, HI))
    assert ranged.output_face.all() and ranged.reference_face.all() and ranged.target_valid.all()
    for name in ("output_face", "reference_face", "target_valid", "driving_valid", "landmarks",
                 "reference_landmarks", "flicker", "reference_flicker"):
        np.testing.assert_array_equal(getattr(ranged, name), getattr(sliced, name), err_msg=name)
    for name in ranged.identity:
        np.testing.assert_array_equal(ranged.identity[name], sliced.identity[name])
    # SMIRK runs on batches of a chunk's faces (7 frames here, 12 there): float rounding differs, nothing else.
    for name in ("achieved", "target", "driving_values"):
        np.testing.assert_allclose(getattr(ranged, name), getattr(sliced, name), atol=1e-5, err_msg=name)
    for section in ("coverage", "identity"):
        assert ranged.summary[section] == sliced.summary[section]
    for section in ("expression", "stability"):
        for key, value in ranged.summary[section].items():
            if isinstance(value, float):
                assert value == pytest.approx(sliced.summary[section][key], rel=1e-3, abs=1e-6), (section, key)
    assert ranged.summary["stability"]["flicker"] > 0 and ranged.summary["expression"]["frames"] == HI - LO


def test_a_range_other_than_the_recorded_one_is_warned_about(tmp_path, media, caplog):
    """The provenance record of a run of driving frames [2, 9): --start/--end selecting [0, 7) get a warning
    naming both ranges (before any model), the render's own range none."""
    from retarget.evaluation.clip import plan_evaluation
    from tests.evaluation.test_side_by_side import write_lossless

    frames = moving_face_frames(HI - LO)
    output = write_lossless(tmp_path / "out.mp4", frames, "run", {"driving_frames": [LO, HI]})
    for first, warned in ((0, True), (LO, False)):
        caplog.clear()
        plan = plan_evaluation(EvalInputs(output, driving=media["clip"], identity=media["photo"],
                                          start=float(first / RATE), end=float((first + HI - LO) / RATE)))
        assert (plan.lo, plan.hi, plan.panel) == (first, first + HI - LO, None)
        messages = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        expected = f"out.mp4 records driving frames {LO}-{HI - 1}, but --start/--end select 0-{HI - LO - 1} here"
        assert messages == ([expected + ": give the render's --start/--end"] if warned else [])


def test_report_numbers_print_nan_as_not_available():
    """Per-frame values (float32, as the contact sheet's titles print them) and summary values alike."""
    from retarget.evaluation.report import format_number

    assert format_number(np.float32("nan")) == format_number(float("nan")) == format_number(None) == "n/a"
    assert format_number(np.float32(0.125)) == "0.125" and format_number(np.int64(7)) == "7"


def test_targets_are_the_values_run_renders_around_a_filled_gap():
    """A short detection gap is filled by the scan and smoothed as measured by ``run``; the targets follow the
    same preparation (and the clamp to the published ranges), not one that counts the gap as missing."""
    from fractions import Fraction
    from types import SimpleNamespace

    from retarget.evaluation.clip import _targets
    from retarget.jobs.common import prepared_motion
    from retarget.jobs.expressions import rendered_expressions
    from retarget.jobs.frames import ClipScan
    from retarget.jobs.options import JobOptions

    n, rate = 30, Fraction(30)
    rng = np.random.default_rng(3)
    values = rng.normal(0, 0.3, (n, 55)).astype(np.float32)
    values[:, 52] = np.abs(values[:, 52]) * 0.05  # a jaw opening near 0: smoothing dips below the bound
    values[:, 50:52] = np.clip(values[:, 50:52], 0, 1)
    detected = np.ones(n, bool)
    detected[12:14] = False  # a short gap, filled by the scan (valid, interpolated values)
    values[12:14] = (values[11] + values[14]) / 2
    times = np.arange(n) / float(rate)
    scan = ClipScan(np.zeros((n, 5, 2), np.float32), np.ones(n, bool), times, rate, expressions=values,
                    detected=detected)
    targets, _ = _targets(SimpleNamespace(smooth="kalman"), None, scan, times)
    rendered = rendered_expressions(prepared_motion(scan.motion(), "kalman"), JobOptions(models="m", device="cpu"))
    np.testing.assert_allclose(targets.values, rendered, atol=1e-6)
    assert targets.values[:, 52].min() >= 0.0


def test_report_plots_span_the_clip_and_say_when_there_is_nothing_to_plot():
    from retarget.evaluation.report import _figure, _finish_axis

    times = np.arange(30) / 30.0
    figure, (with_data, empty) = _figure(2)
    with_data.plot(times, np.where(np.arange(30) > 10, 0.5, np.nan), label="output")
    empty.plot(times, np.full(30, np.nan), label="output")
    for axis in (with_data, empty):
        _finish_axis(axis, times)
    assert with_data.get_xlim() == empty.get_xlim() == (0.0, 29 / 30)
    assert with_data.get_legend() is not None and not with_data.texts
    assert empty.get_legend() is None and empty.texts[0].get_text().startswith("no frame to plot")
