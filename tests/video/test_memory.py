"""Host memory does not grow with clip length (decode -> encode with audio, measured in fresh processes)."""

import subprocess
import sys
from pathlib import Path

from tests.video.synthetic import make_video

ROOT = Path(__file__).resolve().parents[2]


def peak_growth_kib(clip: Path, out: Path) -> int:
    script = Path(__file__).with_name("memory_probe.py")
    done = subprocess.run([sys.executable, str(script), str(clip), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    return int(done.stdout.strip().splitlines()[-1])


def test_ten_times_longer_clip_within_25_percent_peak_memory(tmp_path):
    short = make_video(tmp_path / "short.mp4", 30, 320, 240, audio="aac")
    long = make_video(tmp_path / "long.mp4", 300, 320, 240, audio="aac")
    growth_short = peak_growth_kib(short, tmp_path / "s.mp4")
    growth_long = peak_growth_kib(long, tmp_path / "l.mp4")
    assert growth_short > 0
    assert growth_long <= 1.25 * growth_short, (growth_short, growth_long)
