"""Clear errors and reporting: motion files without a face, unusable neutral frames, the face-models line on
stderr, and the SMIRK channel order option."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from retarget.cli import build_parser, main, options_from_args
from retarget.errors import InputError
from retarget.jobs.expressions import neutral_values
from retarget.jobs.options import JobOptions
from retarget.motion import MotionTrack, load_motion, neutral_frame, relative_motion, save_motion
from retarget.motion.adjust import NeutralFrameError
from retarget.video.probe import probe_video
from tests.cli.conftest import BLANK, FRAMES

ROOT = Path(__file__).resolve().parents[2]


def assert_one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("retarget: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def faceless_motion(path: Path, frames: int = 6) -> Path:
    track = MotionTrack.constant_rate(np.zeros((frames, 55), np.float32), np.zeros(frames, bool), Fraction(25))
    return save_motion(track, path)


def motion_with_faces(path: Path, frames: int = 6) -> Path:
    values = np.random.default_rng(0).normal(0, 0.3, (frames, 55)).astype(np.float32)
    values[:, 50:] = 0.1
    valid = np.ones(frames, bool)
    valid[2] = False
    return save_motion(MotionTrack.constant_rate(values, valid, Fraction(25)), path)


# --- motion files without a single face ---------------------------------------------------------------------

def test_motion_file_without_a_valid_frame_is_an_input_error(tmp_path):
    path = faceless_motion(tmp_path / "empty.npz")
    with pytest.raises(InputError) as caught:
        load_motion(path)
    assert str(caught.value) == f"{path}: the motion file has no frame with a face (6 frames, none valid)"
    zero = faceless_motion(tmp_path / "zero.npz", frames=0)
    with pytest.raises(InputError, match="zero.npz: the motion file has no frames"):
        load_motion(zero)


def test_edit_and_plot_refuse_a_faceless_motion_file(media, fast_args, tmp_path, capsys):
    source = faceless_motion(tmp_path / "empty.npz")
    out = tmp_path / "out.mp4"
    code = main(["edit", str(media["clip"]), "--expression", str(source), "-o", str(out), *fast_args])
    assert_one_line_error(code, capsys.readouterr().err, "empty.npz: the motion file has no frame with a face")
    code = main(["plot", str(source), "-o", str(tmp_path / "curves.png")])
    assert_one_line_error(code, capsys.readouterr().err, "empty.npz: the motion file has no frame with a face")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz"]  # nothing written


# --- neutral frames ----------------------------------------------------------------------------------------

def test_unusable_neutral_frames_are_input_errors():
    values = np.random.default_rng(1).normal(size=(5, 55)).astype(np.float32)
    valid = np.array([True, False, True, True, True])
    track = MotionTrack.constant_rate(values, valid, Fraction(25))
    np.testing.assert_array_equal(neutral_values(track, 3), values[3])
    for frame, message in [(5, "--neutral-frame 5 is out of range: the driving motion has 5 frames (0 to 4)"),
                           (-1, "--neutral-frame -1 is out of range: the driving motion has 5 frames (0 to 4)"),
                           (1, "--neutral-frame 1 is not a valid frame of the driving motion "
                               "(no face was found in it)")]:
        with pytest.raises(InputError) as caught:
            neutral_values(track, frame)
        assert str(caught.value) == message
    with pytest.raises(InputError, match="neutral frame 9 is out of range"):
        relative_motion(track, np.zeros(55, np.float32), neutral=9)
    faceless = MotionTrack.constant_rate(values, np.zeros(5, bool), Fraction(25))
    for call in (lambda: neutral_frame(faceless), lambda: neutral_values(faceless, None)):
        with pytest.raises(NeutralFrameError, match="no frame with a face to take a neutral face from"):
            call()
    assert issubclass(NeutralFrameError, ValueError)  # library callers catching ValueError still do


def test_edit_neutral_frame_out_of_range_is_one_line(media, fast_args, tmp_path, capsys):
    source = motion_with_faces(tmp_path / "m.npz")
    out = tmp_path / "out.mp4"
    code = main(["edit", str(media["clip"]), "--expression", str(source), "-o", str(out), "--relative",
                 "--neutral-frame", "40", *fast_args])
    assert_one_line_error(code, capsys.readouterr().err,
                          "--neutral-frame 40 is out of range: the expression source m.npz has 6 frames (0 to 5)")
    assert not out.exists() and not (tmp_path / "out.mp4.retarget-work").exists()



def test_run_neutral_frame_out_of_range_stops_before_the_face_scan(media, fast_args, tmp_path, capsys, monkeypatch):
    from retarget.jobs import run as run_module

    def no_scan(*args, **kwargs):
        raise AssertionError("the clip was scanned")

    monkeypatch.setattr(run_module, "scan_clip", no_scan)
    out = tmp_path / "out.mp4"
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--relative",
                 "--neutral-frame", "40", *fast_args])
    assert_one_line_error(code, capsys.readouterr().err,
                          f"--neutral-frame 40 is out of range: the driving motion has {FRAMES} frames (0 to 11)")
    assert not out.exists() and not (tmp_path / "out.mp4.retarget-work").exists()

def test_run_neutral_frame_is_a_frame_number_of_the_clip(media, fast_args, tmp_path, capsys, monkeypatch):
    """With --start, ``--neutral-frame`` still counts from the clip's first frame (as the help says), and must lie
    in the rendered range, whose frames alone are scanned."""
    from retarget.jobs import run as run_module

    out = tmp_path / "out.mp4"
    head = ["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--start", "0.1",
            "--end", "0.3", "--relative"]
    code = main([*head, "--neutral-frame", "1", *fast_args])
    assert_one_line_error(code, capsys.readouterr().err, "--neutral-frame 1 is out of range: the driving motion has "
                          "6 frames (frames 3 to 8 of the clip, from --start/--end)")
    assert not out.exists()
    used, original = [], run_module.neutral_values

    def recording(track, frame, first=0, valid=None):
        values = original(track, frame, first, valid)
        used.append((frame, first, [i for i in range(len(track)) if np.array_equal(track.values[i], values)]))
        return values

    monkeypatch.setattr(run_module, "neutral_values", recording)
    assert main([*head, "--neutral-frame", "5", *fast_args]) == 0
    assert used == [(5, 3, [2])]  # clip frame 5 is the third frame of the range, which starts at frame 3


# --- which face models run, on stderr without --debug ---------------------------------------------------------

def _cli(argv, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), RETARGET_MODELS="")
    return subprocess.run([sys.executable, "-m", "retarget.cli", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_stderr_names_the_face_models_once_they_loaded(media, cli_models, tmp_path):
    models, _ = cli_models
    done = _cli(["extract", media["clip"], "-o", tmp_path / "m.npz", "--models", models, "--device", "cpu",
                 "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"retarget.faces.detection: face detector: MTCNN (bundled; {models / 'antelopev2' / 'scrfd_10g_bnkps.onnx'} "
        "not found)",
        f"retarget.faces.expressions: SMIRK crop: from the detector's keypoints "
        f"({models / 'smirk' / 'face_landmarker.task'} not found), RGB input",
        "retarget.jobs.extract: clip.mp4: no face in 2 of 12 frames (0.33-0.40 s); the motion file marks them missing",
    ]
    # a failure before any face model loaded: the error line alone
    failed = _cli(["extract", tmp_path / "absent.mp4", "-o", tmp_path / "n.npz", "--models", models])
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [f"retarget: error: {tmp_path / 'absent.mp4'}: no such file"]



@pytest.mark.parametrize("command", ["run", "edit"])
def test_a_photo_that_is_not_an_image_fails_before_the_face_models_load(command, media, cli_models, tmp_path):
    """``--identity`` (``run``) or an image SOURCE (``edit``) that is not an image: the error line alone on stderr,
    with no line of the face models (which load only after the inputs are checked)."""
    models, _ = cli_models
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture")
    option = "--identity" if command == "run" else "--expression"
    done = _cli([command, media["clip"], option, fake, "-o", tmp_path / "o.mp4", "--models", models])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"retarget: error: {fake}: not a readable image file (cannot identify image file)"]
    assert not (tmp_path / "o.mp4").exists()


def test_a_photo_without_a_face_is_the_only_line_on_stderr(media, cli_models, tmp_path):
    """The face models load before the photo can be checked for a face; their lines wait for the job's first
    output, so a job that stops there prints its error line alone. A job that runs prints them first."""
    from PIL import Image

    models, base = cli_models
    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank)
    common = ["--models", models, "--base-model", base, "--device", "cpu", "--steps", "1"]
    done = _cli(["run", media["clip"], "--identity", blank, "-o", tmp_path / "o.mp4", *common])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"retarget: error: {blank}: no face found in the photo"]
    done = _cli(["run", media["clip"], "--identity", media["photo"], "-o", tmp_path / "p.mp4", *common])
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("retarget.faces.detection: face detector: MTCNN")
    assert lines[1].startswith("retarget.faces.expressions: SMIRK crop: ")
    assert lines[2].startswith("faces clip.mp4: ")  # then the scan's bar (a log's lines: stderr is a pipe)

def test_compile_without_a_cxx_compiler_warns_once_and_renders_eagerly(media, fast_args, tmp_path):
    """``--compile`` where inductor cannot build its kernels (no C++ compiler: ``CXX`` names none, and a fresh
    compile cache) is one warning line, then the job renders eagerly to the end."""
    out = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RETARGET_MODELS="", CXX=str(tmp_path / "no-such-g++"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    done = subprocess.run([sys.executable, "-m", "retarget.cli", "run", str(media["clip"]), "--identity",
                           str(media["photo"]), "-o", str(out), "--compile", *fast_args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    failed = [line for line in done.stderr.splitlines() if "torch.compile failed" in line]
    assert len(failed) == 1 and "Traceback" not in done.stderr, done.stderr
    assert failed[0].startswith("retarget.pipeline.compile: torch.compile failed (")
    assert "C++ compiler" in failed[0] and failed[0].endswith("); rendering without it")
    assert probe_video(out).frame_count == FRAMES


# --- frames without the face ----------------------------------------------------------------------------------

def _scan(valid, detected=None, rate=Fraction(25)):
    from retarget.jobs.frames import ClipScan

    valid = np.asarray(valid, bool)
    times = np.arange(len(valid)) / float(rate)
    return ClipScan(np.zeros((len(valid), 5, 2), np.float32), valid, times, rate,
                    detected=None if detected is None else np.asarray(detected, bool))


def test_missing_face_note_counts_and_spans_the_frames_without_the_face():
    assert _scan([1, 1, 1]).missing_face_note("a.mp4") is None
    scan = _scan([0, 0, 1, 1, 0, 1, 1, 1, 0, 0])  # 25 fps: frames 0-1, 4, 8-9 missing
    assert scan.missing_face_note("a.mp4") == "a.mp4: no face in 5 of 10 frames (0.00-0.08 s, 0.16-0.20 s, 0.32-0.40 s)"
    # a range counts only its own frames, at the clip's times
    assert scan.missing_face_note("a.mp4", (3, 6)) == "a.mp4: no face in 1 of 3 frames (0.16-0.20 s)"
    assert scan.missing_face_note("a.mp4", (5, 8)) is None
    # more than three spans: the first three and a count
    many = _scan([0, 1] * 5)
    assert many.missing_face_note("b.mp4") == \
        "b.mp4: no face in 5 of 10 frames (0.00-0.04 s, 0.08-0.12 s, 0.16-0.20 s and 2 more span(s))"
    # filled False counts the frames the detector missed, filled gaps included
    filled = _scan([1, 1, 1, 1], detected=[1, 0, 0, 1])
    assert filled.missing_face_note("c.mp4") is None
    assert filled.missing_face_note("c.mp4", filled=False) == "c.mp4: no face in 2 of 4 frames (0.04-0.12 s)"


@pytest.mark.parametrize("command", ["run", "edit"])
def test_run_and_edit_say_which_frames_have_no_face(command, media, fast_args, tmp_path, caplog):
    out = tmp_path / "out.mp4"
    target = ["--identity", media["photo"]] if command == "run" else ["--expression", media["photo"]]
    with caplog.at_level("WARNING", logger="retarget.jobs"):
        assert main([command, str(media["clip"]), *map(str, target), "-o", str(out), *fast_args]) == 0
    notes = [r.getMessage() for r in caplog.records if "no face in" in r.getMessage()]
    consequence = ("those frames take the expressions of the neighbouring frames with a face" if command == "run"
                   else "those frames pass through unedited")
    assert notes == [f"clip.mp4: no face in 2 of 12 frames (0.33-0.40 s); {consequence}"]
    assert probe_video(out).frame_count == FRAMES



def test_edit_says_which_frames_a_short_source_leaves_unedited(media, fast_args, tmp_path, caplog):
    """A SOURCE video shorter than the clip: the clip's frames after its end have no expression to render and pass
    through unedited, and a warning says which (the frames without the face are named by their own note)."""
    from retarget.testing.media import moving_face_frames, write_clip
    from tests.cli.conftest import RATE

    source = write_clip(tmp_path / "short.mp4", moving_face_frames(4), RATE)
    out = tmp_path / "out.mp4"
    with caplog.at_level("WARNING", logger="retarget.jobs"):
        assert main(["edit", str(media["clip"]), "--expression", str(source), "-o", str(out), *fast_args]) == 0
    notes = [r.getMessage() for r in caplog.records if "ends before the edit does" in r.getMessage()]
    times = np.arange(FRAMES) * 1001 / 30000
    # frames 4-9 have the face and no SOURCE frame (frames 10-11 have no face: the other note names them)
    assert notes == [f"short.mp4 ends before the edit does: 6 of 12 frames with the face "
                     f"({times[4]:.2f}-{times[10]:.2f} s) have no expression from it and pass through unedited "
                     "(give a longer SOURCE, or --end to edit only what it covers)"]
    from retarget.provenance.metadata import read_provenance

    assert read_provenance(out)["settings"]["edited_frames"] == 4
    caplog.clear()
    with caplog.at_level("WARNING", logger="retarget.jobs"):  # a SOURCE as long as the clip: no such note
        assert main(["edit", str(media["clip"]), "--expression", str(media["clip"]), "-o",
                     str(tmp_path / "full.mp4"), *fast_args]) == 0
    assert not [r for r in caplog.records if "ends before the edit does" in r.getMessage()]

def test_run_names_driving_frames_whose_expressions_were_interpolated(cli_models, fast_args, media, tmp_path,
                                                                     caplog):
    """A short gap between two detections of one shot (the face covered) is bridged (interpolated keypoints and
    expressions): ``edit`` renders and pastes back those frames, so it says nothing, while ``run`` names the
    driving frames that had no face. A cut-away of the same length (a cut to an empty shot and back) is not
    bridged: ``edit`` passes it through and says so."""
    from retarget.testing.media import moving_face_frames, write_clip

    run_note = "gap.mp4: no face in 2 of 12 frames (0.13-0.20 s); those frames take the expressions of the " \
               "neighbouring frames with a face"
    for gap, expected in (({"covered": (4, 5)}, {"run": [run_note], "edit": []}),
                          ({"blank": (4, 5)}, {"run": [run_note], "edit": [
                              "gap.mp4: no face in 2 of 12 frames (0.13-0.20 s); those frames pass through unedited"]})):
        clip = write_clip(tmp_path / "gap.mp4", moving_face_frames(FRAMES, **gap))
        notes = {}
        for command, target in (("run", "--identity"), ("edit", "--expression")):
            caplog.clear()
            with caplog.at_level("WARNING", logger="retarget.jobs"):
                assert main([command, str(clip), target, str(media["photo"]), "-o",
                             str(tmp_path / f"{command}-{next(iter(gap))}.mp4"), *fast_args]) == 0
            notes[command] = [r.getMessage() for r in caplog.records if "no face in" in r.getMessage()]
        assert notes == expected, gap


def test_a_photo_with_several_faces_names_the_one_used(media, fast_args, tmp_path, caplog):
    import cv2
    from PIL import Image

    photo = np.asarray(Image.open(media["photo"]).convert("RGB"))
    small = cv2.resize(photo, (photo.shape[1] * 2 // 3, photo.shape[0] * 2 // 3))
    pair = np.full((photo.shape[0], photo.shape[1] + small.shape[1], 3), 128, np.uint8)
    pair[:, :photo.shape[1]], pair[:small.shape[0], photo.shape[1]:] = photo, small
    Image.fromarray(pair).save(tmp_path / "two.png")
    single = tmp_path / "single.mp4"
    with caplog.at_level("WARNING", logger="retarget.jobs"):
        assert main(["run", str(media["clip"]), "--identity", str(tmp_path / "two.png"), "--end", "0.2",
                     "-o", str(tmp_path / "out.mp4"), *fast_args]) == 0
        assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "--end", "0.2",
                     "-o", str(single), *fast_args]) == 0
    notes = [r.getMessage() for r in caplog.records if "in the photo" in r.getMessage()]
    assert notes == ["two.png: 2 faces in the photo; using the largest (crop the photo to pick another)"]


# --- --smirk-channels -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "edit", "extract", "batch"])
def test_smirk_channels_reaches_the_job_options(command, tmp_path):
    target = {"run": ["--identity", "p.png"], "edit": ["--expression", "m.npz"], "extract": [],
              "batch": ["--identity", "p.png"]}[command]
    args = build_parser().parse_args([command, "in", "-o", "out", *target, "--smirk-channels", "bgr"])
    assert options_from_args(args).smirk_channels == "bgr"
    default = build_parser().parse_args([command, "in", "-o", "out", *target])
    assert options_from_args(default).smirk_channels == "rgb"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "in", "-o", "out", *target, "--smirk-channels", "grb"])


def test_smirk_channels_is_part_of_the_resume_key(tmp_path):
    rgb, bgr = JobOptions(models=tmp_path), JobOptions(models=tmp_path, smirk_channels="bgr")
    assert rgb.render_key()["smirk_channels"] == "rgb" and bgr.render_key()["smirk_channels"] == "bgr"
    assert rgb.render_key() != bgr.render_key()
    with pytest.raises(InputError, match="--smirk-channels must be one of rgb, bgr"):
        JobOptions(models=tmp_path, smirk_channels="grb")


def test_extract_with_bgr_feeds_the_encoder_reversed_channels(media, cli_models, tmp_path):
    from retarget.faces.detection import load_detector
    from retarget.faces.expressions import ExpressionExtractor, load_smirk_encoder
    from retarget.video.reader import VideoReader

    models, _ = cli_models
    args = ["--models", str(models), "--device", "cpu", "--no-progress", "--smirk-channels", "bgr"]
    assert main(["extract", str(media["clip"]), "-o", str(tmp_path / "bgr.npz"), *args]) == 0
    bgr = load_motion(tmp_path / "bgr.npz")
    assert bgr.valid.sum() == FRAMES - len(BLANK)
    # independent reference: the encoder applied directly to the channel-reversed crops of the detected face
    detector, encoder = load_detector(None, device="cpu"), load_smirk_encoder(models / "smirk" / "SMIRK_em1.pt", "cpu")
    cropper = ExpressionExtractor(encoder)
    for frame, _, index in VideoReader(media["clip"]).iter_frames():
        if not bgr.valid[index]:
            continue
        crop = cropper.crop(frame, detector.detect(frame)[0].keypoints)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(np.stack([crop, crop[..., ::-1]]).transpose(0, 3, 1, 2)))
            as_rgb, as_bgr = encoder(batch).numpy()
        np.testing.assert_allclose(bgr.values[index], as_bgr, atol=1e-5)
        assert np.abs(as_rgb - as_bgr).max() > 1e-3  # the order matters


# --- command-line usage errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, prog, fragment", [
    ([], "retarget", "the following arguments are required: COMMAND"),
    (["bogus"], "retarget", "invalid choice: 'bogus'"),
    (["run"], "retarget run", "the following arguments are required: DRIVING, --identity, -o/--output"),
    (["run", "a.mp4", "--identity", "b.jpg", "-o", "c.mp4", "--steps", "x"], "retarget run",
     "argument --steps: invalid int value: 'x'"),
    (["run", "a.mp4", "--identity", "b.jpg", "-o", "c.mp4", "--nope"], "retarget run",
     "unrecognized arguments: --nope"),
    (["weights", "random"], "retarget weights random", "the following arguments are required: DIR"),
    (["weights", "random", "dir", "--bad"], "retarget weights random", "unrecognized arguments: --bad"),
])
def test_usage_errors_are_one_line_naming_the_command_and_its_help(argv, prog, fragment, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: ") and fragment in lines[0], lines[0]
    assert lines[0].endswith(f"(see: {prog} --help)"), lines[0]


def test_help_still_prints_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: retarget run ") and "--identity PHOTO" in out and "--paste-back" in out


def test_version_prints_the_package_version_and_matches_the_installed_metadata(capsys):
    import importlib.metadata

    import retarget

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"retarget {retarget.__version__}\n"
    try:
        installed = importlib.metadata.version("retarget")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("retarget is not installed (run from a source tree)")
    assert installed == retarget.__version__  # pyproject takes the version from retarget/__init__.py


# --- Ctrl-C ---------------------------------------------------------------------------------------------------------

def test_an_interrupted_run_says_what_it_kept_and_the_same_command_resumes(media, fast_args, tmp_path, capsys,
                                                                           monkeypatch):
    from retarget.video.resume import ChunkedRender

    out = tmp_path / "out.mp4"
    argv = ["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--no-overlap",
            *fast_args]  # chunks of 4 frames
    real_save, saved = ChunkedRender.save_chunk, []

    def save_then_stop(self, index, frames, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third chunk is being saved
        real_save(self, index, frames, **kwargs)
        saved.append(index)

    monkeypatch.setattr(ChunkedRender, "save_chunk", save_then_stop)
    assert main(argv) == 130
    work = tmp_path / "out.mp4.retarget-work"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"retarget: interrupted; 8 rendered frame(s) kept in {work} (the same command resumes from them)")
    assert not out.exists() and work.is_dir()
    monkeypatch.setattr(ChunkedRender, "save_chunk", real_save)
    assert main(argv) == 0
    assert probe_video(out).frame_count == FRAMES and not work.exists()

    def stop_at_once(self, index, frames, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ChunkedRender, "save_chunk", stop_at_once)
    out.unlink()
    assert main(argv) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "retarget: interrupted"  # nothing kept: nothing to say


def test_sigterm_stops_like_ctrl_c_and_a_rerun_says_it_resumes_or_starts_over(media, fast_args, tmp_path, capsys,
                                                                              monkeypatch, caplog):
    """SIGTERM (``timeout``, ``docker stop``, a scheduler) keeps the rendered chunks as Ctrl-C does; the same command
    says it resumes, a command with another seed says it drops them."""
    import os
    import signal

    from retarget.video.resume import ChunkedRender

    out = tmp_path / "out.mp4"
    argv = ["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--no-overlap",
            *fast_args]  # chunks of 4 frames
    real_save, saved = ChunkedRender.save_chunk, []

    def save_then_terminate(self, index, frames, **kwargs):
        if len(saved) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(self, index, frames, **kwargs)
        saved.append(index)

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(ChunkedRender, "save_chunk", save_then_terminate)
    assert main(argv) == 143
    work = tmp_path / "out.mp4.retarget-work"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"retarget: terminated; 8 rendered frame(s) kept in {work} (the same command resumes from them)")
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler lives only while a command runs
    monkeypatch.setattr(ChunkedRender, "save_chunk", real_save)
    caplog.clear()
    with caplog.at_level("INFO", logger="retarget.video.resume"):
        assert main([*argv, "--seed", "5"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "retarget.video.resume"] == [
        f"out.mp4: the 2 rendered chunk(s) kept in {work} were made with other settings or inputs; rendering from "
        "the start"]

    out.unlink()
    monkeypatch.setattr(ChunkedRender, "save_chunk", save_then_terminate)
    saved.clear()
    assert main(argv) == 143
    monkeypatch.setattr(ChunkedRender, "save_chunk", real_save)
    caplog.clear()
    with caplog.at_level("INFO", logger="retarget.video.resume"):
        assert main(argv) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "retarget.video.resume"] == [
        f"out.mp4: resuming: 8 of {FRAMES} frame(s) already rendered (kept in {work})"]


def test_an_interrupted_batch_says_what_its_work_folders_keep(tmp_path):
    import argparse
    import json

    from retarget.cli import _kept_note

    out_dir = tmp_path / "out"
    assert _kept_note(argparse.Namespace(command="batch", output=str(out_dir))) == ""  # no folder yet
    for name, frames in (("a.mp4", [16, 16]), ("sub/b.mp4", [16]), ("c.mp4", [])):
        work = out_dir / f"{name}.retarget-work"
        work.mkdir(parents=True)
        chunks = {str(i): {"frames": count, "bytes": 1} for i, count in enumerate(frames)}
        (work / "manifest.json").write_text(json.dumps({"chunks": chunks}))
    assert _kept_note(argparse.Namespace(command="batch", output=str(out_dir))) == (
        f"; 48 rendered frame(s) of 2 clip(s) kept in their work folders in {out_dir} (the same command resumes "
        "from them)")
