"""Shared fixtures for the face tests: real photos shipped in packages, and tiny random models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from retarget.faces.image_io import load_image
from retarget.faces.mtcnn import MtcnnDetector
from retarget.testing.face_models import write_random_arcface_onnx, write_random_smirk


def _insightface_image(name: str) -> Path:
    spec = importlib.util.find_spec("insightface")
    return Path(spec.origin).parent / "data" / "images" / name


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def group_photo_path() -> Path:
    return _insightface_image("t1.jpg")


@pytest.fixture(scope="session")
def group_photo(group_photo_path) -> np.ndarray:
    return load_image(group_photo_path)


@pytest.fixture(scope="session")
def hanks() -> np.ndarray:
    return load_image(_insightface_image("Tom_Hanks_54745.png"))


@pytest.fixture(scope="session")
def detector() -> MtcnnDetector:
    return MtcnnDetector(device="cpu")


@pytest.fixture(scope="session")
def astronaut_face(detector, astronaut):
    return detector.detect(astronaut)[0]


@pytest.fixture(scope="session")
def arcface_path(tmp_path_factory) -> Path:
    return write_random_arcface_onnx(tmp_path_factory.mktemp("models") / "antelopev2" / "arcface.onnx")


@pytest.fixture(scope="session")
def smirk_path(tmp_path_factory) -> Path:
    return write_random_smirk(tmp_path_factory.mktemp("models") / "smirk" / "SMIRK_em1.pt")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-12)))
