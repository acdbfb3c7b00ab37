"""Bad inputs (one line, non-zero exit, no output), batch skip/failure/sharding, and doctor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from retarget.cli import main
from retarget.errors import InputError
from retarget.jobs import batch as batch_module
from retarget.video.probe import probe_video
from tests.cli.conftest import FRAMES, copy_to


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retarget: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing_video", "no such file"),
        ("corrupt_video", "corrupt.mp4"),
        ("photo_without_face", "no face"),
        ("identity_not_image", "notes.jpg"),
        ("missing_weights", "nowhere"),
        ("bad_preset", "invalid preset 'warp'"),
    ],
)
def test_run_bad_inputs(case, fragment, media, fast_args, tmp_path, capsys):
    driving, identity, args = media["clip"], media["photo"], list(fast_args)
    if case == "missing_video":
        driving = tmp_path / "absent.mp4"
    elif case == "corrupt_video":
        driving = media["corrupt"]
    elif case == "photo_without_face":
        identity = media["blank_photo"]
    elif case == "identity_not_image":
        identity = media["not_image"]
    elif case == "missing_weights":
        args[args.index("--models") + 1] = str(tmp_path / "nowhere")
    elif case == "bad_preset":
        args += ["--preset", "warp"]
    out = tmp_path / "out.mp4"
    code, err = run_cli(["run", driving, "--identity", identity, "-o", out, *args], capsys)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []  # no output, no partial file, no work folder


def test_edit_junk_motion_and_debug_traceback(media, fast_args, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, err = run_cli(["edit", media["clip"], "--expression", media["junk_motion"], "-o", out, *fast_args], capsys)
    assert_one_line_error(code, err, "junk.npz")
    assert not out.exists()
    with pytest.raises(Exception, match="junk.npz"):
        main(["edit", str(media["clip"]), "--expression", str(media["junk_motion"]), "-o", str(out), *fast_args,
              "--debug"])
    code, err = run_cli(["edit", media["clip"], "--expression", media["photo"], "-o", tmp_path / "x.avi",
                         *fast_args], capsys)
    assert_one_line_error(code, err, "x.avi")


def test_batch_lists_videos_by_extension_in_any_case(tmp_path, caplog):
    import os

    from retarget.jobs.batch import list_videos

    names = ["a.mp4", "B.MOV", "c.MTS", "d.m2ts", "e.3gp", "f.mxf", "g.ogv", "h.webm", ".hidden.mp4", "notes.txt",
             "still.jpg", "anim.gif"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.mp4").mkdir()  # a folder is not a video, whatever its name
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    os.mkfifo(tmp_path / "pipe.mkv")
    with caplog.at_level("WARNING", logger="retarget.jobs.batch"):
        assert [p.name for p in list_videos(tmp_path)] == ["B.MOV", "a.mp4", "c.MTS", "d.m2ts", "e.3gp", "f.mxf",
                                                           "g.ogv", "h.webm"]
    # what has a video's name but is not a file is named, so that it does not vanish from the batch unseen
    assert caplog.messages == [f"{tmp_path / 'folder.mp4'}: skipped (a folder)",
                               f"{tmp_path / 'gone.mp4'}: skipped (a link to a missing file)",
                               f"{tmp_path / 'pipe.mkv'}: skipped (not a regular file)"]


def test_batch_skips_finished_logs_failures_and_exits_non_zero(media, fast_args, tmp_path, capsys, caplog,
                                                               monkeypatch):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    copy_to(media["clip"], inputs, "b.mp4")
    copy_to(media["corrupt"], inputs, "c.mp4")
    (inputs / "readme.txt").write_text("not a video")
    argv = ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]
    code, err = run_cli(argv, capsys)
    assert code == 1
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mp4", "b.mp4", "failures.jsonl"]
    assert probe_video(outputs / "a.mp4").frame_count == FRAMES
    records = [json.loads(line) for line in (outputs / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["file"].endswith("c.mp4") and records[0]["type"] == "InputError"
    # the user sees each failure with its reason as it happens (a warning), the counts, and one error line last
    failed = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "c.mp4" in r.getMessage()]
    assert failed == [f"{records[0]['error']} (recorded in {outputs / 'failures.jsonl'}; the batch goes on)"]
    assert str(inputs / "c.mp4") in records[0]["error"]
    lines = err.strip().splitlines()
    assert lines[-2] == "retarget batch: 3 clip(s): 2 rendered, 0 already finished, 1 failed"
    assert lines[-1] == f"retarget: error: 1 clip(s) failed; the reasons are in {outputs / 'failures.jsonl'}"
    assert "Traceback" not in err

    tried = []
    from retarget.jobs import run as run_module

    original = run_module.scan_run
    monkeypatch.setattr(run_module, "scan_run", lambda video, *a, **k: (tried.append(Path(video).name),
                                                                       original(video, *a, **k))[1])
    code, err = run_cli(argv, capsys)
    assert code == 1 and tried == ["c.mp4"]  # finished outputs skipped, the bad file tried again
    assert len((outputs / "failures.jsonl").read_text().splitlines()) == 2
    assert "retarget batch: 3 clip(s): 0 rendered, 2 already finished, 1 failed" in err.splitlines()

    (inputs / "c.mp4").unlink()  # nothing left to do: the rerun says so and succeeds
    code, err = run_cli(argv, capsys)
    assert code == 0
    assert err.strip().splitlines()[-1] == "retarget batch: 2 clip(s): 0 rendered, 2 already finished, 0 failed"


def test_a_clip_another_batch_is_rendering_is_left_to_it(media, fast_args, tmp_path, capsys, caplog):
    """Two batches on one folder: a clip whose output the other holds (its work folder locked) is not a failure."""
    import subprocess
    import sys

    from tests.video.test_resume_lock import HOLDER, ROOT

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    copy_to(media["clip"], inputs, "b.mp4")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(outputs / "b.mp4")], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "ready"
        code, err = run_cli(["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 0
    assert err.strip().splitlines()[-1] == ("retarget batch: 2 clip(s): 1 rendered, 0 already finished, 1 left to "
                                            "another process rendering them, 0 failed")
    assert not (outputs / "failures.jsonl").exists()
    busy = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "b.mp4" in r.getMessage()]
    assert len(busy) == 1 and "another process" in busy[0] and busy[0].endswith("(left to it; the batch goes on)")


def test_batch_bad_shared_input_stops_with_one_line(media, fast_args, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    out = tmp_path / "new" / "out"
    code, err = run_cli(["batch", inputs, "-o", out, "--identity", media["blank_photo"], *fast_args], capsys)
    assert_one_line_error(code, err, "no face")
    assert not (tmp_path / "new").exists()  # the folders it made are removed again: nothing left behind
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    code, err = run_cli(["batch", inputs, "-o", tmp_path / "kept", "--identity", media["blank_photo"], *fast_args],
                        capsys)
    assert_one_line_error(code, err, "no face")
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


def test_sharding_gives_every_file_exactly_one_process(tmp_path, monkeypatch):
    files = [tmp_path / f"{i:02d}.mp4" for i in range(11)]
    shares = [batch_module.shard(files, i, 3) for i in range(3)]
    assert sorted(f for share in shares for f in share) == files
    assert [len(s) for s in shares] == [4, 4, 3]
    launcher_names = ["LOCAL_RANK", "WORLD_SIZE", "RANK"]
    launcher_names += [name for pair in batch_module.MPI_RANK_VARIABLES for name in pair]
    for name in launcher_names:
        monkeypatch.delenv(name, raising=False)
    assert batch_module.process_share() == (0, 1)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch of a single process
    assert batch_module.process_share() == (0, 1)
    # Open MPI: its own variables, which accelerate reads only for CPU runs
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    assert batch_module.process_share() == (2, 4)
    for name in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("PMI_SIZE", "3")  # MPICH / Intel MPI
    monkeypatch.setenv("PMI_RANK", "1")
    assert batch_module.process_share() == (1, 3)
    # accelerate launch / torchrun: global rank and world size over all nodes, ahead of anything else
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert batch_module.process_share() == (3, 4)
    # a pair that cannot be right stops the batch instead of giving this process every file
    for rank, shown in (("4", "4"), ("", "(unset)"), ("x", "x")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(InputError, match=rf"^RANK={re.escape(shown)} is not a process of WORLD_SIZE=4 \(0 to "
                                             r"3\): check the launcher's settings$"):
            batch_module.process_share()


def test_doctor_passes_on_complete_folder(cli_models, capsys):
    models, base = cli_models
    assert main(["doctor", "--models", str(models), "--base-model", str(base)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "everything needed is in place, as far as the files' headers tell (retarget doctor --load loads each model "
        "and checks its tensors' names and shapes)")
    assert main(["doctor", "--models", str(models), "--base-model", str(base), "--load"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "everything needed is in place (every model loaded)"


def test_doctor_fails_on_files_that_cannot_be_weights(cli_models, tmp_path, capsys):
    """A present but broken file is a failed check naming what is wrong, as the jobs would say (not a pass)."""
    import shutil

    models, base = cli_models
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    (copy / "exp_adapter" / "exp_adapter.bin").write_text("garbage")
    (copy / "arc2face" / "config.json").write_text("{not json")
    (copy / "antelopev2" / "arcface.onnx").write_bytes(b"\0" * 64)
    assert main(["doctor", "--models", str(copy), "--base-model", str(base)]) == 1
    lines = {line.split("] ", 1)[1].split(":", 1)[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("[")}
    assert lines["exp_adapter/exp_adapter.bin"].startswith("[FAIL] ") and "not a torch weights file" in \
        lines["exp_adapter/exp_adapter.bin"]
    assert lines["arc2face/config.json"].startswith("[FAIL] ") and "not a JSON file" in lines["arc2face/config.json"]
    assert lines["antelopev2/arcface.onnx"].startswith("[FAIL] ") and "cannot load" in lines["antelopev2/arcface.onnx"]
    for name in ("arc2face/diffusion_pytorch_model.safetensors", "encoder/pytorch_model.bin", "smirk/SMIRK_em1.pt",
                 "ref_adapter/pytorch_lora_weights.safetensors"):
        assert lines[name].startswith("[ok  ] "), lines[name]


def test_batch_out_of_device_memory_stops_with_one_line_and_resumes(media, fast_args, tmp_path, capsys,
                                                                    monkeypatch):
    """Every clip's diffusion batches have the same size, so one that runs out of device memory stops the batch
    (no clip is recorded as failed, the next is not tried); the same command resumes the clip's finished chunks."""
    import torch

    from retarget.pipeline import ExpressionPipeline

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    copy_to(media["clip"], inputs, "b.mp4")
    argv = ["batch", inputs, "-o", outputs, "--identity", media["photo"], *fast_args]
    original = ExpressionPipeline.__call__
    calls = []

    def short_of_memory(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # a.mp4's third chunk (one batch of 4 frames per chunk)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExpressionPipeline, "__call__", short_of_memory)
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "ran out of memory", "try --batch-size 2")
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mp4.retarget-work"]  # no failures.jsonl, b not started

    calls.clear()
    monkeypatch.setattr(ExpressionPipeline, "__call__",
                        lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len(calls) == 1 + 3  # a.mp4's last chunk, then b.mp4's three
    assert sorted(p.name for p in outputs.iterdir()) == ["a.mp4", "b.mp4"]
    assert probe_video(outputs / "a.mp4").frame_count == FRAMES


def test_doctor_says_whether_compile_and_the_gpu_face_models_can_work(tmp_path, monkeypatch):
    """``--compile`` needs a C++ compiler on the CPU ($CXX alone when set), Triton and a C compiler on a GPU;
    on a GPU, onnxruntime without its CUDA provider runs the detector and ArcFace on the CPU. Warnings only."""
    import importlib.util

    import onnxruntime
    import torch

    from retarget.jobs import weights

    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("g++", "gcc"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)

    def lines():
        return {c.name: c.line() for c in weights.environment_checks()}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lines()["--compile"] == f"[ok  ] --compile: {tools / 'g++'}"
    import retarget

    assert next(iter(lines().values())) == f"[ok  ] retarget: {retarget.__version__}"  # the first line
    real_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pillow_heif" else real_spec(name, *a))
    assert lines()["heif"].startswith("[warn] heif: not installed: HEIF/HEIC photos")
    monkeypatch.setattr(importlib.util, "find_spec", real_spec)
    if real_spec("pillow_heif") is not None:
        assert lines()["heif"].startswith("[ok  ] heif: pillow-heif ")
    assert "face models on the GPU" not in lines()
    monkeypatch.setenv("CXX", str(tmp_path / "absent-g++"))  # inductor then uses $CXX alone
    assert lines()["--compile"].startswith("[warn] --compile: no C++ compiler found")
    assert lines()["--compile"].endswith(": --compile would render without compiling")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Stand-in GPU")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "triton" else real_find_spec(name, *a))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    found = lines()
    assert found["cuda"] == "[ok  ] cuda: 1 GPU(s): Stand-in GPU"
    assert found["--compile"] == f"[ok  ] --compile: Triton and {tools / 'gcc'}"
    assert found["face models on the GPU"].startswith("[warn] face models on the GPU: onnxruntime has no CUDA provider")
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert lines()["face models on the GPU"].startswith("[ok  ]")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    assert lines()["--compile"].startswith("[warn] --compile: Triton is not installed")


@pytest.mark.parametrize("command", ["run", "edit", "batch"])
def test_a_missing_photo_or_source_stops_before_any_work(command, media, fast_args, tmp_path, capsys, caplog):
    """The identity photo / expression source is read only after the face scan; its absence is said at once."""
    absent = tmp_path / "absent.jpg"
    inputs = tmp_path / "in"
    inputs.mkdir()
    copy_to(media["clip"], inputs, "a.mp4")
    source = {"run": [media["clip"], "--identity", absent], "edit": [media["clip"], "--expression", absent],
              "batch": [inputs, "--identity", absent]}[command]
    out = tmp_path / ("out" if command == "batch" else "out.mp4")
    code, err = run_cli([command, *source, "-o", out, *fast_args], capsys)
    assert_one_line_error(code, err, f"{absent}: no such file")
    assert not out.exists()
    assert not any("face detector" in record.getMessage() for record in caplog.records)  # no model was loaded


def test_a_reader_that_stops_reading_ends_the_command_quietly(cli_models, monkeypatch, capsys):
    """``retarget doctor | head -1``: stdout's reader goes away; no error line, exit status 141 (128 + SIGPIPE), as
    Unix tools end."""
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["doctor", "--models", str(cli_models[0]), "--base-model", str(cli_models[1])]) == 141
    assert "error" not in capsys.readouterr().err
