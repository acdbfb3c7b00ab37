"""Fixtures for the command-line tests: tiny weights with face models, and short clips with real faces."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retarget.testing.media import face_photo, moving_face_frames, write_clip

RATE = Fraction(30000, 1001)
FRAMES = 12
BLANK = (10, 11)  # the last two frames: a gap that is not filled (no detection after it)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Paths of the shared inputs: ``clip`` (12 frames 160x120 at 30000/1001 fps with AAC audio; frames 10 and
    11 have no face), ``photo`` (a face), ``blank_photo`` (no face), ``not_image`` (text named .jpg), ``corrupt``
    (random bytes named .mp4), ``junk_motion`` (an .npz that is not a motion file)."""
    folder = tmp_path_factory.mktemp("cli-media")
    paths = {"clip": write_clip(folder / "clip.mp4", moving_face_frames(FRAMES, blank=BLANK), RATE)}
    Image.fromarray(face_photo()).save(folder / "photo.png")
    paths["photo"] = folder / "photo.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(folder / "blank.png")
    paths["blank_photo"] = folder / "blank.png"
    (folder / "notes.jpg").write_text("not a picture\n")
    paths["not_image"] = folder / "notes.jpg"
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    paths["corrupt"] = folder / "corrupt.mp4"
    np.savez(folder / "junk.npz", values=np.zeros(3))
    paths["junk_motion"] = folder / "junk.npz"
    return paths


@pytest.fixture
def fast_args(cli_models):
    """Common options for quick renders on the tiny model."""
    models, base = cli_models
    return ["--models", str(models), "--base-model", str(base), "--steps", "2", "--guidance", "1.0",
            "--batch-size", "4", "--chunk-size", "4", "--no-progress", "--device", "cpu"]


def copy_to(path: Path, folder: Path, name: str | None = None) -> Path:
    """Copy ``path`` into ``folder`` (as ``name``)."""
    target = folder / (name or path.name)
    shutil.copyfile(path, target)
    return target
