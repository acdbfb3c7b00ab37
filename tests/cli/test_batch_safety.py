"""``batch`` safety: distinct output names agreed on by every process, no output folder inside the input folder,
and model files checked once before any clip (and before the face scan of ``run`` / ``edit``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retarget.jobs import edit as edit_module
from retarget.jobs import run as run_module
from retarget.jobs.batch import output_names
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.probe import probe_video
from tests.cli.conftest import FRAMES, RATE, copy_to
from tests.cli.test_errors_batch_weights import assert_one_line_error, run_cli

SHORT = 8


def test_output_names_are_distinct_and_depend_only_on_the_list():
    names = ["B.mp4", "a.mov", "a.mov.mkv", "a.mp4", "b.mkv", "c.MP4", "d.mov"]
    videos = sorted(Path("in") / n for n in names)
    got = output_names(videos)
    assert got == {
        Path("in/B.mp4"): "B.mp4.mp4", Path("in/b.mkv"): "b.mkv.mp4",  # same stem up to case
        Path("in/a.mov"): "a.mov-2.mp4",  # a.mov.mp4 is a.mov.mkv's own name
        Path("in/a.mov.mkv"): "a.mov.mp4", Path("in/a.mp4"): "a.mp4.mp4",
        Path("in/c.MP4"): "c.mp4", Path("in/d.mov"): "d.mp4",
    }
    assert len({n.casefold() for n in got.values()}) == len(videos)
    assert output_names(sorted(reversed(videos))) == got


@pytest.fixture
def launcher(monkeypatch):
    """``process(i, n)``: set torchrun / accelerate's variables for process ``i`` of ``n``."""
    from retarget.jobs.batch import MPI_RANK_VARIABLES

    for name in [name for pair in MPI_RANK_VARIABLES for name in pair]:
        monkeypatch.delenv(name, raising=False)

    def process(index: int, count: int) -> None:
        monkeypatch.setenv("WORLD_SIZE", str(count))
        monkeypatch.setenv("RANK", str(index))
        monkeypatch.setenv("LOCAL_RANK", str(index))

    return process


def test_same_stem_clips_get_their_own_outputs_across_processes(media, fast_args, tmp_path, capsys, launcher,
                                                                monkeypatch):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    write_clip(inputs / "a.mov", moving_face_frames(SHORT), RATE)  # a shorter clip, so the outputs tell them apart
    argv = ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]
    for index in (1, 0):  # two processes of one launch, each with its share of the sorted list
        launcher(index, 2)
        code, err = run_cli(argv, capsys)
        assert code == 0, err
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mov.mp4", "a.mp4.mp4"]
    assert probe_video(outputs / "a.mov.mp4").frame_count == SHORT
    assert probe_video(outputs / "a.mp4.mp4").frame_count == FRAMES

    tried = []
    monkeypatch.setattr(run_module, "scan_run", lambda video, *a, **k: tried.append(video))
    for index in (0, 1):  # a rerun finds both finished under the same names
        launcher(index, 2)
        assert run_cli(argv, capsys)[0] == 0
    launcher(0, 1)
    assert run_cli(argv, capsys)[0] == 0
    assert tried == []


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_folder_in_the_input_folder_is_refused(media, fast_args, tmp_path, capsys, where):
    inputs = tmp_path / "in"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    out = inputs if where == "same" else inputs / "results"
    code, err = run_cli(["batch", inputs, "-o", out, "--identity", media["photo"], *fast_args], capsys)
    assert_one_line_error(code, err, "must not be the input folder")
    assert sorted(p.name for p in inputs.iterdir()) == ["a.mp4"]


@pytest.fixture
def broken_models(cli_models, tmp_path):
    """``broken(relative path)``: a copy of the test models with that file replaced by junk; returns the folder."""
    models, _ = cli_models

    def broken(name: str) -> Path:
        copy = tmp_path / "models"
        shutil.copytree(models, copy)
        (copy / name).write_bytes(b"not a weights file\n" * 10)
        return copy

    return broken


BROKEN = ["exp_adapter/exp_adapter.bin", "ref_adapter/pytorch_lora_weights.safetensors", "smirk/SMIRK_em1.pt",
          "antelopev2/arcface.onnx"]


def with_models(args: list, models: Path) -> list:
    args = list(args)
    args[args.index("--models") + 1] = str(models)
    return args


@pytest.mark.parametrize("name", BROKEN)
def test_batch_with_bad_weights_fails_once_before_any_clip(name, broken_models, media, fast_args, tmp_path, capsys,
                                                           monkeypatch):
    models = broken_models(name)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for clip in ("a.mp4", "b.mp4", "c.mp4"):
        copy_to(media["clip"], inputs, clip)
    tried = []
    monkeypatch.setattr(run_module, "scan_run", lambda video, *a, **k: tried.append(video))
    code, err = run_cli(["batch", inputs, "-o", outputs, "--identity", media["photo"],
                         *with_models(fast_args, models)], capsys)
    assert_one_line_error(code, err, Path(name).name)
    assert tried == [] and not outputs.exists()  # no clip tried, no failures.jsonl: the folder made is removed


@pytest.mark.parametrize("command", ["run", "edit"])
@pytest.mark.parametrize("name", BROKEN)
def test_run_and_edit_check_weights_before_the_face_scan(command, name, broken_models, media, fast_args, tmp_path,
                                                         capsys, monkeypatch):
    models = broken_models(name)
    scanned = []
    module = run_module if command == "run" else edit_module
    monkeypatch.setattr(module, "scan_clip", lambda *a, **k: scanned.append(a) or pytest.fail("scanned"))
    out = tmp_path / "out.mp4"
    source = ["--identity", media["photo"]] if command == "run" else ["--expression", media["photo"]]
    code, err = run_cli([command, media["clip"], *source, "-o", out, *with_models(fast_args, models)], capsys)
    assert_one_line_error(code, err, Path(name).name)
    assert scanned == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@pytest.mark.parametrize("command", ["run", "edit"])
def test_a_finished_output_of_another_job_is_rendered_again(command, media, fast_args, tmp_path, capsys, caplog):
    from retarget.cli import build_parser, options_from_args
    from retarget.provenance.metadata import read_provenance
    from retarget.video.resume import job_digest

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    copy_to(media["clip"], inputs, "b.mp4")
    target = ["--identity", media["photo"]] if command == "run" else ["--expression", media["photo"]]
    argv = ["batch", inputs, "-o", outputs, *target, *fast_args]
    assert run_cli(argv, capsys)[0] == 0

    def digest(name):
        return read_provenance(outputs / name)["settings"]["job_digest"]

    # the digest is the one of the job's own key, computed here from the same inputs and options
    options = options_from_args(build_parser().parse_args([command, str(media["clip"]), "-o", "x.mp4",
                                            *[str(a) for a in target], *fast_args]))
    key = (run_module.run_job_key(inputs / "a.mp4", media["photo"], options, True, False, 0, FRAMES)
           if command == "run" else
           edit_module.edit_job_key(inputs / "a.mp4", media["photo"], options, False, 0, FRAMES))
    assert digest("a.mp4") == job_digest(key)
    first = {name: (outputs / name).read_bytes() for name in ("a.mp4", "b.mp4")}

    code, err = run_cli(argv, capsys)  # the same job: both finished, nothing rewritten
    assert code == 0 and err.strip().splitlines()[-1].endswith("0 rendered, 2 already finished, 0 failed")
    assert all((outputs / name).read_bytes() == data for name, data in first.items())

    shutil.copyfile(media["clip"], outputs / "b.mp4")  # an output without a record: kept, as before
    caplog.clear()
    code, err = run_cli([*argv, "--seed", "1"], capsys)  # another job: a.mp4 again, b.mp4 kept
    assert code == 0 and err.strip().splitlines()[-1].endswith("1 rendered, 1 already finished, 0 failed")
    assert [r.getMessage() for r in caplog.records if "another job" in r.getMessage()] == \
        [f"{outputs / 'a.mp4'}: rendered by another job (other inputs or settings); rendering it again"]
    assert digest("a.mp4") != job_digest(key) and (outputs / "a.mp4").read_bytes() != first["a.mp4"]
    assert (outputs / "b.mp4").read_bytes() == media["clip"].read_bytes()
    assert probe_video(outputs / "a.mp4").frame_count == FRAMES

    # a batch stopped by its shared input says only that, not that it would render a.mp4 again
    caplog.clear()
    code, err = run_cli([*argv[:4], "--identity" if command == "run" else "--expression", media["blank_photo"],
                         *fast_args, "--seed", "2"], capsys)
    assert code == 1 and "no face" in err.strip().splitlines()[-1]
    assert not [r for r in caplog.records if "another job" in r.getMessage()]


def test_an_anamorphic_clip_has_its_pixel_aspect_in_the_job_key(media, fast_args, tmp_path, capsys):
    """Square-pixel keys are those of earlier versions; a clip with another pixel aspect (read resampled since)
    has it in its key, and ``batch`` compares a finished output with the same key its render used."""
    from fractions import Fraction

    from retarget.cli import build_parser, options_from_args
    from retarget.provenance.metadata import read_provenance
    from retarget.video.resume import job_digest

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    clip = write_clip(inputs / "wide.mp4", moving_face_frames(SHORT), pixel_aspect=Fraction(4, 3))
    options = options_from_args(build_parser().parse_args(["run", str(clip), "-o", "x.mp4", "--identity",
                                                           str(media["photo"]), *fast_args]))
    square = run_module.run_job_key(clip, media["photo"], options, True, False, 0, SHORT)
    assert set(square) == {"command", "driving", "identity", "reference", "side_by_side", "range", "options"}
    assert run_module.run_job_key(clip, media["photo"], options, True, False, 0, SHORT, Fraction(1)) == square
    wide = run_module.run_job_key(clip, media["photo"], options, True, False, 0, SHORT, Fraction(4, 3))
    assert wide == {**square, "pixel_aspect": [4, 3]}
    interlaced = run_module.run_job_key(clip, media["photo"], options, True, False, 0, SHORT, Fraction(1), True)
    assert interlaced == {**square, "deinterlace": "bwdif"}  # frames read deinterlaced: another job
    assert edit_module.edit_job_key(clip, media["photo"], options, False, 0, SHORT, Fraction(4, 3))["pixel_aspect"] \
        == [4, 3]

    argv = ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]
    assert run_cli(argv, capsys)[0] == 0
    assert read_provenance(outputs / "wide.mp4")["settings"]["job_digest"] == job_digest(wide)
    first = (outputs / "wide.mp4").read_bytes()
    code, err = run_cli(argv, capsys)
    assert code == 0 and err.strip().splitlines()[-1].endswith("0 rendered, 1 already finished, 0 failed")
    assert (outputs / "wide.mp4").read_bytes() == first


def test_batch_folders_that_are_files_or_cannot_be_made(media, fast_args, tmp_path, capsys):
    inputs, out, photo = tmp_path / "in", tmp_path / "out", media["photo"]
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    cases = [
        ([media["clip"], "-o", out, "--identity", photo], f"{media['clip']}: is a file, not a folder of videos"),
        ([inputs, "-o", a_file, "--identity", photo], f"{a_file}: is a file; the output must be a folder"),
        ([inputs, "-o", a_file / "out", "--identity", photo],
         f"{a_file / 'out'}: cannot create the output folder (not a directory)"),
        ([inputs, "-o", out, "--identity", tmp_path], f"{tmp_path}: is a folder, not a file"),
    ]
    if not _takes_files(Path("/proc")):  # a folder that exists but takes no files
        cases += [([inputs, "-o", "/proc", "--identity", photo],
                   "/proc: cannot write to the output folder (it does not take new files)"),
                  ([inputs, "-o", "/proc/out", "--identity", photo],
                   "/proc/out: cannot create the output folder (it does not take new files)")]
    for args, message in cases:
        code, err = run_cli(["batch", *args, *fast_args], capsys)
        assert_one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"] and a_file.read_text() == "x"


def _takes_files(folder: Path) -> bool:
    from retarget.jobs.common import write_problem

    return write_problem(folder / "probe") is None


@pytest.mark.parametrize("command", ["run", "edit", "batch"])
def test_a_missing_reference_adapter_stops_before_the_face_scan(command, cli_models, media, fast_args, tmp_path,
                                                                capsys, monkeypatch):
    """The Reference Adapter is on by default: without its file, the job stops with one line naming the file (in the
    folder given) before scanning; ``--no-reference`` renders without it."""
    models = tmp_path / "models"
    shutil.copytree(cli_models[0], models)
    shutil.rmtree(models / "ref_adapter")
    scanned = []
    for module in (run_module, edit_module):
        monkeypatch.setattr(module, "scan_clip", lambda *a, **k: scanned.append(a) or pytest.fail("scanned"))
    out = tmp_path / "out.mp4"
    if command == "batch":
        (tmp_path / "in").mkdir()
        copy_to(media["clip"], tmp_path / "in")
        head = ["batch", tmp_path / "in", "-o", tmp_path / "out", "--identity", media["photo"]]
    else:
        head = [command, media["clip"], "--identity" if command == "run" else "--expression", media["photo"],
                "-o", out]
    code, err = run_cli([*head, *with_models(fast_args, models)], capsys)
    assert_one_line_error(code, err, f"Reference Adapter not found: {models / 'ref_adapter'}", "--no-reference")
    assert scanned == [] and not out.exists() and not (tmp_path / "out").exists()
    if command == "run":
        monkeypatch.undo()
        code, err = run_cli([*head, *with_models(fast_args, models), "--no-reference"], capsys)
        assert code == 0, err
        assert probe_video(out).frame_count == FRAMES
