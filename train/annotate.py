"""Annotate a folder of face images and videos for training.

::

    python -m train.annotate IN -o DATA --models M [--resolution 512] [--fps 10] [--faces largest|all]

Every image and video under ``IN`` (recursively, in name order) becomes samples: the FFHQ-aligned crop at
``--resolution``, the ArcFace embedding and SMIRK's 55 expression values of a detected face, and for video frames
the clip id and the frame's time. Images give their largest face (``--faces all``: every face of at least
``--min-face`` pixels); videos give the largest face of each frame sampled at ``--fps`` (default: every frame),
and frames without a face are skipped. Writes the layout of :mod:`train.manifest`. Re-running on the same
``DATA`` skips inputs already done, so an interrupted run resumes; an unreadable file or one without a face is
recorded in ``inputs.jsonl`` and skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.faces.models import FaceModels

from .cli import run_command
from .manifest import ManifestWriter, SampleRecord, open_for_append

log = logging.getLogger("train.annotate")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
CHUNK_FRAMES = 16


def find_inputs(folder: Path) -> list[tuple[Path, str]]:
    """``(path, "image"|"video")`` for every file under ``folder`` with a known suffix, sorted by path."""
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder}")
    found = []
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if path.is_file() and suffix in IMAGE_SUFFIXES:
            found.append((path, "image"))
        elif path.is_file() and suffix in VIDEO_SUFFIXES:
            found.append((path, "video"))
    return found


def input_key(rel_path: str) -> str:
    """A file-system-safe, unique name for an input: its path with odd characters replaced, plus a hash."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", rel_path).strip("_")[-60:]
    return f"{stem}-{hashlib.sha1(rel_path.encode()).hexdigest()[:8]}"


@dataclass
class FaceBatch:
    """Faces found in some frames: one entry per sample."""

    frames: list[np.ndarray]       # the frame each face is in (references, not copies)
    keypoints: list[np.ndarray]    # [5, 2] each
    boxes: list[np.ndarray]        # [4] each
    scores: list[float]
    frame_numbers: list[int | None]
    times: list[float | None]


class Annotator:
    """Detects, aligns and describes faces with a :class:`~retarget.faces.FaceModels`; writes samples."""

    def __init__(self, face_models: FaceModels, writer: ManifestWriter, resolution: int, fps: float | None = None,
                 all_faces: bool = False, min_face: float = 0.0):
        self.face_models, self.writer = face_models, writer
        self.resolution, self.fps = resolution, fps
        self.all_faces, self.min_face = all_faces, min_face

    def _faces(self, frame: np.ndarray, all_faces: bool) -> list:
        faces = [f for f in self.face_models.detect(frame) if f.size >= self.min_face]
        return faces if all_faces else faces[:1]

    def _describe(self, batch: FaceBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(identity [n, 512], expression [n, 55], crops [n, S, S, 3])`` for the faces of ``batch``."""
        identity = np.stack([self.face_models.identity.embed(f, k) for f, k in zip(batch.frames, batch.keypoints)])
        expression = self.face_models.expressions.extract(batch.frames, np.stack(batch.keypoints))
        crops = np.stack([self.face_models.align_ffhq(f, k, self.resolution)[0]
                          for f, k in zip(batch.frames, batch.keypoints)])
        return identity.astype(np.float32), expression.astype(np.float32), crops

    def _image_faces(self, path: Path) -> Iterator[FaceBatch]:
        from retarget.faces import load_image

        image = load_image(path)
        faces = self._faces(image, self.all_faces)
        yield FaceBatch([image] * len(faces), [f.keypoints for f in faces], [f.bbox for f in faces],
                        [float(f.score) for f in faces], [None] * len(faces), [None] * len(faces))

    def _video_faces(self, path: Path) -> Iterator[FaceBatch]:
        from retarget.video.reader import VideoReader

        next_time = 0.0
        for chunk in VideoReader(path).iter_chunks(CHUNK_FRAMES):
            batch = FaceBatch([], [], [], [], [], [])
            for frame, time, number in zip(chunk.frames, chunk.times, chunk.indices):
                if self.fps is not None:
                    if time + 1e-6 < next_time:
                        continue
                    next_time = (np.floor(time * self.fps + 1e-6) + 1) / self.fps
                faces = self._faces(frame, all_faces=False)
                if faces:
                    batch.frames.append(frame)
                    batch.keypoints.append(faces[0].keypoints)
                    batch.boxes.append(faces[0].bbox)
                    batch.scores.append(float(faces[0].score))
                    batch.frame_numbers.append(int(number))
                    batch.times.append(round(float(time), 6))
            yield batch

    def annotate(self, path: Path, rel: str, kind: str) -> int:
        """Annotate one input and record it; returns the number of samples written."""
        key = input_key(rel)
        final = self.writer.arrays_dir(key)
        work = final.with_name(final.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        parts: dict[str, list[np.ndarray]] = {"identity": [], "expression": []}
        crops_raw = work / "crops.raw"
        records: list[SampleRecord] = []
        try:
            batches = self._image_faces(path) if kind == "image" else self._video_faces(path)
            with open(crops_raw, "wb") as raw:
                for batch in batches:
                    if not batch.frames:
                        continue
                    identity, expression, crops = self._describe(batch)
                    parts["identity"].append(identity)
                    parts["expression"].append(expression)
                    raw.write(np.ascontiguousarray(crops).tobytes())
                    for i in range(len(batch.frames)):
                        records.append(SampleRecord(
                            id=f"{key}/{len(records)}", input=rel, kind=kind, arrays=key, row=len(records),
                            clip=key if kind == "video" else None, frame=batch.frame_numbers[i],
                            time=batch.times[i], box=tuple(float(v) for v in batch.boxes[i]),
                            score=round(batch.scores[i], 4)))
        except InputError as exc:
            shutil.rmtree(work, ignore_errors=True)
            log.warning("skipping %s: %s", rel, exc)
            self.writer.add(rel, key, kind, "unreadable", [], str(exc))
            return 0
        if not records:
            shutil.rmtree(work, ignore_errors=True)
            log.info("no face in %s", rel)
            self.writer.add(rel, key, kind, "no-face", [])
            return 0
        np.save(work / "identity.npy", np.concatenate(parts["identity"]))
        np.save(work / "expression.npy", np.concatenate(parts["expression"]))
        _raw_to_npy(crops_raw, work / "crops.npy", (len(records), self.resolution, self.resolution, 3))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        self.writer.add(rel, key, kind, "ok", records)
        return len(records)


def _raw_to_npy(raw_path: Path, npy_path: Path, shape: tuple[int, ...], block: int = 64) -> None:
    """Turn a raw uint8 file of ``shape`` into an ``.npy`` file, copying ``block`` rows at a time."""
    source = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=shape)
    target = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.uint8, shape=shape)
    for start in range(0, shape[0], block):
        target[start:start + block] = source[start:start + block]
    target.flush()
    del source, target
    raw_path.unlink()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.annotate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="folder of images and videos (searched recursively)")
    parser.add_argument("-o", "--output", required=True, help="annotated data folder to create or continue")
    parser.add_argument("--models", required=True, help="models folder with antelopev2/ and smirk/")
    parser.add_argument("--resolution", type=int, default=512, help="side of the aligned crops (default 512)")
    parser.add_argument("--fps", type=float, help="sample video frames at this rate (default: every frame)")
    parser.add_argument("--faces", choices=("largest", "all"), default="largest",
                        help="faces taken from an image (videos always use the largest)")
    parser.add_argument("--min-face", type=float, default=0.0, help="ignore faces smaller than this many pixels")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    return parser


def annotate(args: argparse.Namespace) -> dict[str, int]:
    """Run the annotation; returns counts: ``inputs`` seen, ``skipped`` (done before), ``samples`` written."""
    if args.resolution < 16:
        raise InputError(f"--resolution must be at least 16, got {args.resolution}")
    if args.fps is not None and args.fps <= 0:
        raise InputError(f"--fps must be positive, got {args.fps}")
    source = Path(args.input)
    inputs = find_inputs(source)
    if not inputs:
        raise InputError(f"no images or videos in {source}")
    writer = open_for_append(args.output, args.resolution,
                             sampling={"fps": args.fps, "faces": args.faces, "min_face": args.min_face})
    face_models = FaceModels(args.models, device=args.device).load()  # fails now, naming a missing file
    annotator = Annotator(face_models, writer, args.resolution, args.fps, args.faces == "all", args.min_face)
    counts = {"inputs": len(inputs), "skipped": 0, "samples": 0}
    for number, (path, kind) in enumerate(inputs, 1):
        rel = path.relative_to(source).as_posix()
        if writer.done(rel):
            counts["skipped"] += 1
            continue
        written = annotator.annotate(path, rel, kind)
        counts["samples"] += written
        log.info("[%d/%d] %s: %d samples", number, len(inputs), rel, written)
    log.info("%d inputs (%d done before), %d new samples in %s", counts["inputs"], counts["skipped"],
             counts["samples"], args.output)
    return counts


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), annotate, argv)


if __name__ == "__main__":
    sys.exit(main())
