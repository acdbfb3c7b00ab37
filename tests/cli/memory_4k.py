"""Run as a script: ``python -m tests.cli.memory_4k FOLDER [FRAMES] [RETARGET-OPTIONS...]`` measures the host
memory of ``edit --side-by-side`` on a 3840x2160 clip of FRAMES frames (default 36; a real face scaled up) with the
tiny random model, beyond the models: the peak RSS of a fresh process editing the 4K clip minus the peak of one
editing a 160x120 clip of the same length (same models, same options). FOLDER receives the weights, clips and
outputs. Prints both peaks and the difference in MiB."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

from PIL import Image

from retarget.testing.media import face_photo, moving_face_frames, write_clip
from tests.cli.test_memory import ROOT


def peak_kib(argv: list[str]) -> int:
    """Peak RSS (KiB) of a fresh process running ``retarget ARGV`` (see tests/cli/peak_rss.py); 4K is slow."""
    done = subprocess.run([sys.executable, "-m", "tests.cli.peak_rss", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    status, peak = done.stdout.strip().splitlines()[-1].split()
    if status != "0":
        raise SystemExit(done.stderr)
    return int(peak)


def main(argv: list[str]) -> None:
    from retarget.testing.checkpoints import write_random_checkpoint
    from retarget.testing.face_models import write_random_face_models

    folder = Path(argv[0])
    count = int(argv[1]) if len(argv) > 1 else 36
    extra = argv[2:]
    folder.mkdir(parents=True, exist_ok=True)
    models_dir = folder / "weights"
    if not (models_dir / "done").exists():
        checkpoint = write_random_checkpoint(models_dir, size="tiny", seed=0)
        write_random_face_models(checkpoint.models_dir)
        (models_dir / "done").write_text(f"{checkpoint.models_dir}\n{checkpoint.base_dir}\n")
    models, base = (models_dir / "done").read_text().split()
    photo = folder / "photo.png"
    Image.fromarray(face_photo()).save(photo)
    peaks = {}
    for name, (width, height) in {"small": (160, 120), "4k": (3840, 2160)}.items():
        clip = folder / f"{name}-{count}.mp4"
        if not clip.exists():
            write_clip(clip, moving_face_frames(count, width=width, height=height), Fraction(30000, 1001))
        peaks[name] = peak_kib(["edit", str(clip), "--expression", str(photo), "-o", str(folder / f"{name}-out.mp4"),
                                "--side-by-side", "--models", models, "--base-model", base, "--steps", "1",
                                "--guidance", "1.0", "--batch-size", "8", "--preset", "ultrafast", "--device",
                                "cpu", "--no-progress", *extra]) / 1024
    print(f"peak RSS: {peaks['small']:.0f} MiB (160x120), {peaks['4k']:.0f} MiB (3840x2160); "
          f"beyond the models and runtime: {peaks['4k'] - peaks['small']:.0f} MiB for {count} frames")


if __name__ == "__main__":
    main(sys.argv[1:])
