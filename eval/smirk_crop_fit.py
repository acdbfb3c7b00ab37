"""How far the keypoint SMIRK crop is from the published (MediaPipe) crop on real faces, and the two constants of
the keypoint crop fitted to them.

    pip install -e ".[mediapipe]"
    python -m eval.smirk_crop_fit clip.mp4 photo.jpg ... --landmarker models/smirk/face_landmarker.task

For every face (every ``--every``-th frame of each video, every photo; the detector's faces, MediaPipe's
landmarks of the same face) it compares the crop of :func:`~retarget.faces.smirk_crop.keypoint_crop_transform`
with :func:`~retarget.faces.smirk_crop.landmark_crop_transform`: the crop side's relative difference and the
distance between the crop centres over the published crop's side, per source (file). Then it fits, with every
source weighted equally, :data:`~retarget.faces.smirk_crop.KEYPOINT_CROP_SCALE` (the median over sources of each
source's median side ratio) and :data:`~retarget.faces.smirk_crop.KEYPOINT_CROP_YAW_SHIFT` (the weighted
least-squares slope of the centre's sideways offset against the nose's sideways offset, both in canonical model
units), and scores them left-one-source-out. The detector is the one ``retarget`` uses with ``--models`` (SCRFD
when that folder has it, else the bundled MTCNN).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.faces import smirk_crop
from retarget.faces.alignment import estimate_similarity
from retarget.faces.smirk_crop import CANONICAL_FACE_KEYPOINTS, CANONICAL_FACE_OUTLINE, landmark_crop_transform
from train.cli import run_command

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def collect_faces(paths: list[Path], landmarker, detector, every: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(source name, detector keypoints [5, 2], MediaPipe landmarks [478, 2])`` for each face both found."""
    from retarget.faces.image_io import load_image
    from retarget.video.reader import VideoReader

    def frames(path: Path):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            for frame, _, index in VideoReader(path).iter_frames(None, None):
                if index % every == 0:
                    yield frame
        else:
            yield load_image(path)

    faces = []
    for path in paths:
        for frame in frames(path):
            for face in detector.detect(frame):
                landmarks = landmarker.landmarks(frame, face.keypoints)
                if landmarks is not None:
                    faces.append((path.name, face.keypoints.astype(np.float64), landmarks))
    return faces


def crop_geometry(transform) -> tuple[np.ndarray, float]:
    """A crop's centre (frame pixels) and side (frame pixels)."""
    side = (smirk_crop.SMIRK_CROP_SIZE - 1) / transform.scale
    return transform.to_frame(np.array([[111.5, 111.5]]))[0], side


def keypoint_crop(keypoints: np.ndarray, scale: float, yaw_shift: float):
    """:func:`~retarget.faces.smirk_crop.keypoint_crop_transform` with the two constants given."""
    saved = smirk_crop.KEYPOINT_CROP_SCALE, smirk_crop.KEYPOINT_CROP_YAW_SHIFT
    smirk_crop.KEYPOINT_CROP_SCALE, smirk_crop.KEYPOINT_CROP_YAW_SHIFT = scale, yaw_shift
    try:
        return smirk_crop.keypoint_crop_transform(keypoints)
    finally:
        smirk_crop.KEYPOINT_CROP_SCALE, smirk_crop.KEYPOINT_CROP_YAW_SHIFT = saved


def model_units(keypoints: np.ndarray, landmarks: np.ndarray) -> tuple[float, float, float]:
    """With the uncorrected crop: (published side / keypoint side, the published centre's sideways offset from the
    keypoint centre in model units, the nose's sideways offset from the canonical nose in model units)."""
    to_frame = estimate_similarity(CANONICAL_FACE_KEYPOINTS, keypoints)
    linear = to_frame[:, :2]
    centre, side = crop_geometry(keypoint_crop(keypoints, 1.0, 0.0))
    published_centre, published_side = crop_geometry(landmark_crop_transform(landmarks))
    offset = np.linalg.solve(linear, published_centre - centre)
    nose = np.linalg.solve(linear, keypoints[2] - to_frame[:, 2])
    return published_side / side, float(offset[0]), float(nose[0] - CANONICAL_FACE_KEYPOINTS[2, 0])


def fit(rows: list[tuple[str, float, float, float]]) -> tuple[float, float]:
    """(scale, yaw shift) from ``(source, side ratio, centre offset, nose offset)`` rows, sources weighted equally."""
    sources = np.array([r[0] for r in rows])
    ratios, offsets, noses = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
    scale = float(np.median([np.median(ratios[sources == s]) for s in set(sources)]))
    weights = np.array([1.0 / np.sum(sources == s) for s in sources])
    x_mean = np.sum(weights * noses) / weights.sum()
    y_mean = np.sum(weights * offsets) / weights.sum()
    slope = np.sum(weights * (noses - x_mean) * (offsets - y_mean)) / max(np.sum(weights * (noses - x_mean) ** 2), 1e-12)
    return scale, float(slope)


def score(faces, scale: float, yaw_shift: float) -> dict[str, tuple[float, float, int]]:
    """Per source: (mean relative side difference, mean centre distance / published side, faces)."""
    table: dict[str, list[tuple[float, float]]] = {}
    for source, keypoints, landmarks in faces:
        centre, side = crop_geometry(keypoint_crop(keypoints, scale, yaw_shift))
        published_centre, published_side = crop_geometry(landmark_crop_transform(landmarks))
        table.setdefault(source, []).append((side / published_side - 1,
                                             float(np.linalg.norm(centre - published_centre)) / published_side))
    return {s: (float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])), len(v)) for s, v in table.items()}


def main_command(args: argparse.Namespace) -> None:
    from retarget.faces.detection import load_detector
    from retarget.faces.smirk_crop import MediaPipeLandmarker

    paths = [Path(p) for p in args.inputs]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    faces = collect_faces(paths, MediaPipeLandmarker(args.landmarker), load_detector(args.models, device="cpu"),
                          args.every)
    if len({f[0] for f in faces}) < 2:
        raise InputError("need faces from at least two sources (files) to fit and score left-one-out")
    rows = [(source, *model_units(keypoints, landmarks)) for source, keypoints, landmarks in faces]
    scale, yaw_shift = fit(rows)
    now = score(faces, smirk_crop.KEYPOINT_CROP_SCALE, smirk_crop.KEYPOINT_CROP_YAW_SHIFT)
    before = score(faces, 1.0, 0.0)
    print(f"{len(faces)} faces; fitted scale {scale:.3f}, yaw shift {yaw_shift:.3f} "
          f"(in use: {smirk_crop.KEYPOINT_CROP_SCALE}, {smirk_crop.KEYPOINT_CROP_YAW_SHIFT})")
    print(f"{'source':24s} {'faces':>5s} | uncorrected side, centre | in use side, centre | left-one-out side, centre")
    for source in sorted(now):
        held_out = fit([r for r in rows if r[0] != source])
        loo = score([f for f in faces if f[0] == source], *held_out)[source]
        print(f"{source:24s} {now[source][2]:5d} | {before[source][0]:+7.1%} {before[source][1]:6.1%} | "
              f"{now[source][0]:+7.1%} {now[source][1]:6.1%} | {loo[0]:+7.1%} {loo[1]:6.1%}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.smirk_crop_fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="videos and photos with faces")
    parser.add_argument("--landmarker", required=True, help="the published face_landmarker.task")
    parser.add_argument("--models", help="models folder (SCRFD when it has one; default: the bundled MTCNN)")
    parser.add_argument("--every", type=int, default=6, help="use every N-th video frame (default 6)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), main_command, argv)


if __name__ == "__main__":
    sys.exit(main())
