"""Shared fixtures: a tiny random-weight checkpoint in the published layout, written once per test session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``RandomCheckpoint(models_dir, base_dir)``: tiny Arc2Face + adapters (32x32 images) and an SD1.5-style base."""
    from retarget.testing.checkpoints import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def cli_models(tmp_path_factory):
    """(models_dir, base_dir): the tiny random diffusion model plus random ArcFace and SMIRK files (the CLI's,
    the app's and the evaluation's tests; a test that changes a file works on a copy)."""
    from retarget.testing.checkpoints import write_random_checkpoint
    from retarget.testing.face_models import write_random_face_models

    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("cli-weights"), size="tiny", seed=0)
    write_random_face_models(checkpoint.models_dir)
    return checkpoint.models_dir, checkpoint.base_dir

