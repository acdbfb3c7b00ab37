"""The protocol's inputs: identity photos and expression sources, read once per run.

* Identities: every image in a folder (sorted by name). Each photo's largest face gives the ArcFace embedding
  (the identity condition) and the FFHQ-aligned crop at the model's resolution (the reference image), plus the
  photo's keypoints in that crop (where an aligned generated face has its keypoints, see
  :attr:`Identity.crop_keypoints`).
* Expressions: every image (largest face -> SMIRK's 55 values) and every motion file ``.npz`` (its valid frames,
  at most ``motion_frames`` of them evenly spread, each one expression named ``<stem>@<frame>``) in a folder.

A file that cannot be used (not an image, no face, a motion file without valid frames) is skipped with a warning
and listed in :attr:`Inputs.skipped`; a folder that is missing or has nothing usable is an
:class:`~retarget.errors.InputError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.faces.models import FaceModels
from retarget.jobs.frames import photo_face
from retarget.video.resume import file_identity

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MOTION_SUFFIX = ".npz"


@dataclass
class Identity:
    """One identity photo.

    ``name``: the file's stem (used in output names). ``path``, ``fingerprint`` (:func:`file_identity`).
    ``keypoints``: float32 ``[5, 2]`` of its largest face in the photo. ``embedding``: ArcFace float32 ``[512]``,
    unit norm (the condition). ``judged``: ``{judge name: unit embedding [D]}`` of the photo's face by each
    identity judge (the scores' anchor). ``reference``: FFHQ-aligned crop uint8 ``[S, S, 3]``.
    ``crop_keypoints``: the face's keypoints in that crop, float32 ``[5, 2]``.
    """

    name: str
    path: Path
    fingerprint: dict
    keypoints: np.ndarray
    embedding: np.ndarray
    judged: dict[str, np.ndarray]
    reference: np.ndarray
    crop_keypoints: np.ndarray


@dataclass
class Expression:
    """One target expression: ``name`` (file stem, ``<stem>@<frame>`` for a motion file's frame), ``values``
    float32 ``[55]``, ``source`` (file path) and ``fingerprint`` of that file."""

    name: str
    values: np.ndarray
    source: Path
    fingerprint: dict


@dataclass
class Inputs:
    """``identities`` and ``expressions`` (both sorted by name) and ``skipped``: ``{"identities": [{"file",
    "reason"}], "expressions": [...]}``."""

    identities: list[Identity]
    expressions: list[Expression]
    skipped: dict[str, list[dict]] = field(default_factory=lambda: {"identities": [], "expressions": []})


def _files(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no {what} files ({', '.join(suffixes)})")
    return files


def check_folders(identities, expressions) -> None:
    """Fail early (before any model loads) on a missing or empty input folder."""
    _files(Path(identities), IMAGE_SUFFIXES, "identity image")
    _files(Path(expressions), IMAGE_SUFFIXES + (MOTION_SUFFIX,), "expression")


def _unique_names(names: list[str], folder: Path, what: str) -> None:
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    duplicates = sorted(name for name, count in seen.items() if count > 1)
    if duplicates:
        raise InputError(f"{folder}: several {what} files named {duplicates[0]!r} (with different extensions); "
                         "names must be unique without the extension")


def _skip(skipped: list[dict], path: Path, reason: str, what: str) -> None:
    log.warning("skipping %s: %s", what, reason)
    skipped.append({"file": path.name, "reason": reason})


def read_identities(folder, faces: FaceModels, image_size: int, judges=(), limit: int | None = None,
                    ) -> tuple[list[Identity], list[dict]]:
    """The identity photos of ``folder`` in name order, the first ``limit`` usable ones (all when None), and the
    skipped files. ``image_size``: side of the reference crop (the model's output size). ``judges``: identity
    judges (``name``, ``embed(image, keypoints)``) whose embedding of each photo is kept."""
    folder = Path(folder)
    paths = _files(folder, IMAGE_SUFFIXES, "identity image")
    _unique_names([p.stem for p in paths], folder, "identity")
    identities, skipped = [], []
    for path in paths:
        if limit is not None and len(identities) >= limit:
            break
        try:
            image, face = photo_face(path, faces)
        except InputError as error:  # not an image, or no face (NoFaceError)
            _skip(skipped, path, str(error), "identity photo")
            continue
        embedding = faces.identity.embed(image, face.keypoints)
        reference, transform = faces.align_ffhq(image, face.keypoints, image_size)
        judged = {judge.name: np.asarray(judge.embed(image, face.keypoints), np.float32) for judge in judges}
        identities.append(Identity(path.stem, path, file_identity(path), face.keypoints.astype(np.float32),
                                   embedding.astype(np.float32), judged, reference,
                                   transform.to_crop(face.keypoints).astype(np.float32)))
    if not identities:
        raise InputError(f"{folder}: no identity photo with a face ({len(skipped)} skipped)")
    return identities, skipped


def _motion_expressions(path: Path, motion_frames: int) -> list[Expression]:
    from retarget.motion.motion_file import load_motion

    track = load_motion(path)
    frames = np.flatnonzero(track.valid)
    if len(frames) > motion_frames:
        frames = frames[np.round(np.linspace(0, len(frames) - 1, motion_frames)).astype(int)]
    fingerprint = file_identity(path)
    return [Expression(f"{path.stem}@{int(k):05d}", track.values[k].astype(np.float32), path, fingerprint)
            for k in frames]


def read_expressions(folder, faces: FaceModels, motion_frames: int = 5) -> tuple[list[Expression], list[dict]]:
    """The target expressions of ``folder`` (images and motion files), sorted by name, and the skipped files."""
    folder = Path(folder)
    paths = _files(folder, IMAGE_SUFFIXES + (MOTION_SUFFIX,), "expression")
    _unique_names([p.stem for p in paths], folder, "expression")
    expressions, skipped = [], []
    images, keypoints, image_paths = [], [], []
    for path in paths:
        try:
            if path.suffix.lower() == MOTION_SUFFIX:
                expressions += _motion_expressions(path, motion_frames)
                continue
            image, face = photo_face(path, faces)
        except InputError as error:
            _skip(skipped, path, str(error), "expression source")
            continue
        images.append(image)
        keypoints.append(face.keypoints)
        image_paths.append(path)
    if images:
        values = faces.expressions.extract(images, np.stack(keypoints))
        expressions += [Expression(p.stem, v.astype(np.float32), p, file_identity(p))
                        for p, v in zip(image_paths, values)]
    if not expressions:
        raise InputError(f"{folder}: no usable expression source ({len(skipped)} skipped)")
    expressions.sort(key=lambda e: e.name)
    return expressions, skipped
