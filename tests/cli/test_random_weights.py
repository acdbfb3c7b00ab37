"""`retarget weights random`: random weights in the published layout that every command loads, written atomically."""

from __future__ import annotations

import av
import pytest

from retarget.cli import main
from retarget.errors import InputError
from retarget.models.loading import ModelFiles
from retarget.testing import weights as weights_module

PUBLISHED_FILES = (
    "models/arc2face/config.json", "models/arc2face/diffusion_pytorch_model.safetensors",
    "models/encoder/config.json", "models/encoder/pytorch_model.bin", "models/exp_adapter/exp_adapter.bin",
    "models/ref_adapter/pytorch_lora_weights.safetensors", "models/antelopev2/arcface.onnx",
    "models/smirk/SMIRK_em1.pt", "base/vae/config.json", "base/vae/diffusion_pytorch_model.safetensors",
    "base/scheduler/scheduler_config.json",
)


def test_random_weights_render_a_clip(tmp_path, media, capsys):
    folder = tmp_path / "weights"
    assert main(["weights", "random", str(folder), "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    models, base = folder / "models", folder / "base"
    assert f"RETARGET_MODELS={models} RETARGET_BASE_MODEL={base}" in printed
    for name in PUBLISHED_FILES:
        assert (folder / name).is_file(), name
    ModelFiles.locate(models, base, require_reference=True)  # the loaders' own layout check
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]  # no partial folder left

    out = tmp_path / "out.mp4"
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--models",
                 str(models), "--base-model", str(base), "--steps", "2", "--batch-size", "4", "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height, frames) == (32, 32, 12)  # the tiny model's 32x32 faces, every frame


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = weights_module.write_random_weights(tmp_path / "a", seed=3)
    again = weights_module.write_random_weights(tmp_path / "b", seed=3)
    other = weights_module.write_random_weights(tmp_path / "c", seed=4)
    unet = "arc2face/diffusion_pytorch_model.safetensors"
    assert (first.models_dir / unet).read_bytes() == (again.models_dir / unet).read_bytes()
    assert (first.models_dir / unet).read_bytes() != (other.models_dir / unet).read_bytes()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    # lists written from sets (diffusers' _use_default_values) are sorted, not in the process's hash order
    import json

    for config in (tmp_path / "a").rglob("config.json"):
        listed = json.loads(config.read_text()).get("_use_default_values")
        assert listed is None or listed == sorted(listed), config


def test_a_folder_with_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    assert main(["weights", "random", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retarget: error: {folder} exists and is not an empty folder: give a new folder for the random "
                   "weights"]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_empty_folder_is_used(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    written = weights_module.write_random_weights(folder)
    assert written.models_dir == folder / "models" and (written.models_dir / "smirk" / "SMIRK_em1.pt").is_file()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(models_dir, seed=0):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights_module, "write_random_face_models", broken)
    with pytest.raises(InputError, match=r"weights: cannot write the random weights there \(No space left on device\)"):
        weights_module.write_random_weights(tmp_path / "weights")
    assert list(tmp_path.iterdir()) == []


def test_a_place_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """A file where a folder should be, and a folder this process may not write into: one line each, with the
    reason, and nothing left behind."""
    import os

    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    assert main(["weights", "random", str(blocker / "w" / "v")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"retarget: error: {blocker / 'w' / 'v'}: {blocker} is a file, not a folder"]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["weights", "random", str(locked / "w")]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            f"retarget: error: {locked / 'w'}: cannot write the random weights there (Permission denied)"]
        locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["notes.txt"] + ["locked"] * (os.geteuid() != 0))


def test_the_working_directory_when_empty(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert main(["weights", "random", "."]) == 0
    assert f"export RETARGET_MODELS={folder / 'models'} RETARGET_BASE_MODEL={folder / 'base'}" in \
        capsys.readouterr().out  # absolute: they work from any folder
    assert sorted(p.name for p in folder.iterdir()) == ["base", "models"]
    assert [p.name for p in tmp_path.iterdir()] == ["here"]


def test_a_partial_folder_left_by_a_killed_write_is_removed(tmp_path):
    import os
    import time

    stale, fresh = tmp_path / ".weights.partial-0123456789ab", tmp_path / ".weights.partial-ba9876543210"
    for path in (stale, fresh):
        (path / "models").mkdir(parents=True)
    old = time.time() - weights_module.STALE_PARTIAL_S - 60
    os.utime(stale, (old, old))
    weights_module.write_random_weights(tmp_path / "weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "weights"]  # a recent one may be writing


def test_a_negative_seed_is_one_line(tmp_path, capsys):
    assert main(["weights", "random", str(tmp_path / "w"), "--seed", "-1"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["retarget: error: --seed must be >= 0, got -1"]
    assert not (tmp_path / "w").exists()
