"""Host memory of ``run`` and ``edit`` does not grow with the clip's length: a 10x longer clip's peak RSS stays
within 25% of the short clip's (each measured in a fresh process, tiny weights, one step)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from retarget.testing.media import moving_face_frames, write_clip

SHORT, LONG = 10, 100
ROOT = Path(__file__).resolve().parents[2]


def peak_kib(argv: list[str]) -> int:
    """Peak RSS (KiB) of a fresh process running ``retarget ARGV`` (see tests/cli/peak_rss.py)."""
    done = subprocess.run([sys.executable, "-m", "tests.cli.peak_rss", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    status, peak = done.stdout.strip().splitlines()[-1].split()
    assert status == "0", done.stderr
    return int(peak)


@pytest.mark.parametrize("command", ["run", "edit"])
def test_ten_times_longer_clip_within_a_quarter_of_the_peak_memory(command, media, cli_models, tmp_path):
    models, base = cli_models
    peaks = {}
    for frames in (SHORT, LONG):
        clip = write_clip(tmp_path / f"clip{frames}.mp4", moving_face_frames(frames, width=320, height=240),
                          Fraction(30000, 1001))
        target = "--identity" if command == "run" else "--expression"
        peaks[frames] = peak_kib([command, str(clip), target, str(media["photo"]), "-o",
                                  str(tmp_path / f"out{frames}.mp4"), "--models", str(models), "--base-model",
                                  str(base), "--steps", "1", "--guidance", "1.0", "--chunk-size", "8",
                                  "--batch-size", "8", "--preset", "ultrafast", "--device", "cpu", "--no-progress"])
    growth = peaks[LONG] / peaks[SHORT] - 1
    print(f"{command}: peak RSS {peaks[SHORT] / 1024:.0f} MiB ({SHORT} frames), {peaks[LONG] / 1024:.0f} MiB "
          f"({LONG} frames), growth {growth:+.1%}")
    assert growth < 0.25
