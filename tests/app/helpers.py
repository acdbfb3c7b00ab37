"""Helpers of the app tests: reading result videos, and the command line's output for the same job."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def video_frames(path) -> tuple[np.ndarray, Fraction]:
    """All frames of ``path`` as uint8 ``[n, H, W, 3]`` and the stream's average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, Fraction(stream.average_rate)


def cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``retarget ARGV``."""
    from retarget.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def model_args(cli_models) -> list[str]:
    """The app's model settings on the command line (the app's defaults otherwise, plus the fast sampling)."""
    models, base = cli_models
    return ["--models", str(models), "--base-model", str(base), "--device", "cpu", "--no-progress",
            "--steps", "2", "--guidance", "1.0"]


def as_path(value) -> Path:
    """A gradio_client file result (a local path or a FileData dict) as a Path."""
    return Path(value["path"] if isinstance(value, dict) else value)
