"""Fixtures for the training tests: a small annotated data folder written directly in the manifest layout."""

from __future__ import annotations

import numpy as np
import pytest

from train.manifest import SampleRecord, open_for_append


def write_data_folder(root, resolution: int = 32, images: int = 2, clips: int = 1, frames: int = 4,
                      fps: float = 2.0, seed: int = 0):
    """``images`` still images plus ``clips`` clips of ``frames`` frames at ``fps``, with random arrays.

    Crops are smooth colour gradients (so the VAE sees image-like input); identities and expressions are
    random. Returns the folder.
    """
    rng = np.random.default_rng(seed)
    writer = open_for_append(root, resolution)
    grid = np.linspace(0, 1, resolution, dtype=np.float32)

    def crops(n):
        colours = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
        ramp = (grid[None, :, None, None] + grid[None, None, :, None]) / 2
        return (255 * np.clip(colours * 0.6 + ramp * 0.4, 0, 1)).astype(np.uint8)

    def add(key, kind, n, times):
        folder = writer.arrays_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "identity.npy", rng.normal(size=(n, 512)).astype(np.float32))
        np.save(folder / "expression.npy", rng.normal(scale=0.5, size=(n, 55)).astype(np.float32))
        np.save(folder / "crops.npy", crops(n))
        records = [SampleRecord(id=f"{key}/{r}", input=f"{key}.{'png' if kind == 'image' else 'mp4'}", kind=kind,
                                arrays=key, row=r, clip=key if kind == "video" else None,
                                frame=r if kind == "video" else None, time=times[r] if times else None,
                                box=(0, 0, 10, 10), score=0.9) for r in range(n)]
        writer.add(records[0].input, key, kind, "ok", records)

    for i in range(images):
        add(f"image{i}", "image", 1, None)
    for c in range(clips):
        add(f"clip{c}", "video", frames, [f / fps for f in range(frames)])
    return root


@pytest.fixture(scope="session")
def data_folder(tmp_path_factory):
    return write_data_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread: bit-reproducible losses, and no oversubscription on small CI machines."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def common_args(checkpoint, data, output, steps: int, batch_size: int = 2, lr: float = 1e-3, **extra) -> list[str]:
    """Command-line arguments for a tiny CPU run of either stage."""
    argv = ["--data", str(data), "--models", str(checkpoint.models_dir), "--base-model", str(checkpoint.base_dir),
            "--output", str(output), "--max-steps", str(steps), "--batch-size", str(batch_size), "--lr", str(lr),
            "--resolution", "32", "--num-workers", "0", "--log-every", "1000"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv
