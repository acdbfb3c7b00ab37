"""Write the README's example inputs from photos shipped in installed packages (no media is stored in the repo).

    python samples/make_samples.py            # writes samples/driving.mp4, samples/identity.jpg, samples/expression.jpg

``driving.mp4``: 3 s, 640x480 at 30000/1001 fps with an AAC tone; scikit-image's astronaut photo (public domain)
moving and zooming a little, with a few frames blanked (no face) to show that they do not stop a run.
``identity.jpg``: insightface's bundled Tom Hanks photo. ``expression.jpg``: the astronaut photo.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from PIL import Image

from retarget.testing.media import face_photo, moving_face_frames, second_face_photo, write_clip

HERE = Path(__file__).resolve().parent


def main() -> None:
    rate = Fraction(30000, 1001)
    frames = moving_face_frames(90, width=640, height=480, blank=(40, 41, 42))
    write_clip(HERE / "driving.mp4", frames, rate)
    Image.fromarray(second_face_photo()).save(HERE / "identity.jpg", quality=95)
    Image.fromarray(face_photo()).save(HERE / "expression.jpg", quality=95)
    for name in ("driving.mp4", "identity.jpg", "expression.jpg"):
        print(HERE / name)


if __name__ == "__main__":
    main()
