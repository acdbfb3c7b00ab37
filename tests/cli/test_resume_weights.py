"""Resume keys include the model files: changed weights start the render over, unchanged weights reuse chunks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from retarget.jobs.model_files import ADAPTER_FILES, model_files_identity
from retarget.jobs.options import JobOptions
from retarget.jobs.run import run_job
from retarget.jobs.session import RenderSession
from retarget.video.probe import probe_video
from tests.cli.conftest import RATE

CHUNK = 2
FRAMES = 6  # rendered: the first six frames of the clip (three chunks)
END = float(FRAMES / RATE) - 0.001


class Crash(Exception):
    pass


@pytest.fixture
def models_copy(cli_models, tmp_path):
    models, base = cli_models
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    return copy, base


def retrained_adapter(path: Path) -> None:
    """Replace an ``exp_adapter.bin`` by one with other values (a valid file of the same layout), keeping its
    modification time (same-size, same-time changes are covered by the content hash, see the test below)."""
    stat = path.stat()
    state = torch.load(path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for group in state.values():
        for name, tensor in group.items():
            group[name] = tensor + 0.01 * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
    torch.save(state, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


ORIGINAL_RENDER = RenderSession.render


def render_counting(monkeypatch, crash_after: int | None = None) -> list[list[int]]:
    """Record the frame numbers of each rendered chunk; raise :class:`Crash` once ``crash_after`` chunks are done."""
    calls: list[list[int]] = []

    def render(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        if crash_after is not None and len(calls) == crash_after:
            raise Crash("stopped")
        calls.append([int(i) for i in frame_indices])
        return ORIGINAL_RENDER(self, id_embeds, expressions, frame_indices, reference, desc, times=times)

    monkeypatch.setattr(RenderSession, "render", render)
    return calls


def test_changed_adapter_starts_over_and_unchanged_weights_resume(models_copy, media, tmp_path, monkeypatch):
    models, base = models_copy
    options = JobOptions(models=models, base_model=str(base), steps=2, guidance=1.0, batch_size=2, chunk_size=CHUNK,
                         device="cpu", progress=False)
    out = tmp_path / "out.mp4"
    work = tmp_path / "out.mp4.retarget-work"
    everything = list(range(FRAMES))

    def run(crash_after=None):
        calls = render_counting(monkeypatch, crash_after)
        if crash_after is None:
            run_job(media["clip"], media["photo"], out, options, end=END)
        else:
            with pytest.raises(Crash):
                run_job(media["clip"], media["photo"], out, options, end=END)
        return sum(calls, [])

    assert run(crash_after=1) == everything[:CHUNK]
    chunk = work / "chunk_000000.mp4"
    first_chunk = chunk.read_bytes()
    # unchanged weights: the second run goes on where the first stopped (chunk 0 reused as it was)
    assert run(crash_after=1) == everything[CHUNK:2 * CHUNK]
    assert chunk.read_bytes() == first_chunk and (work / "chunk_000001.mp4").is_file()
    # a retrained expression adapter (same size and time) between two runs: no chunk is reused
    retrained_adapter(models / "exp_adapter" / "exp_adapter.bin")
    assert run() == everything
    assert probe_video(out).frame_count == FRAMES and not work.exists()


def test_identity_follows_size_time_and_adapter_content(models_copy):
    models, base = models_copy
    first = model_files_identity(models, str(base))
    assert set(first["sha256"]) == set(ADAPTER_FILES)
    assert first["files"]["antelopev2/scrfd_10g_bnkps.onnx"] is None  # optional file absent: recorded as such
    assert "vae/diffusion_pytorch_model.safetensors" in first["base"]
    assert model_files_identity(models, str(base)) == first

    arcface = models / "antelopev2" / "arcface.onnx"
    stat = arcface.stat()
    os.utime(arcface, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer file
    touched = model_files_identity(models, str(base))
    assert touched["files"]["antelopev2/arcface.onnx"]["mtime_ns"] == stat.st_mtime_ns + 10**9
    assert touched["sha256"] == first["sha256"] and touched != first

    lora = models / ADAPTER_FILES[1]
    stat = lora.stat()
    data = bytearray(lora.read_bytes())
    data[-1] ^= 0xFF  # one byte of the weights, same size and time
    lora.write_bytes(bytes(data))
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = model_files_identity(models, str(base))
    assert changed["files"] == touched["files"]
    assert changed["sha256"][ADAPTER_FILES[1]] != touched["sha256"][ADAPTER_FILES[1]]
    assert JobOptions(models=models, base_model=str(base)).render_key()["model_files"] == changed
