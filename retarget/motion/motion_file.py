"""The motion file (``.npz``): a reusable per-frame expression track that carries no picture of the actor.

Arrays (all plain, loadable with ``numpy.load(..., allow_pickle=False)``):

- ``format``: the string ``"retarget-motion"``; ``version``: int64 scalar, currently 1
- ``values``: float32 ``[N, 55]`` in SMIRK's order (expression 50, eyelid 2, jaw 3)
- ``valid``: bool ``[N]`` (False: no face in that frame)
- ``times``: float64 ``[N]`` seconds from the first frame
- ``rate``: int64 ``[2]`` frame rate as numerator, denominator (30000/1001 stays exact)
- ``metadata_keys``, ``metadata_values``: str ``[M]`` (e.g. the source file name)
- ``filled`` (optional; written by ``retarget extract``): bool ``[N]``, frames that are not valid because the detector
  missed the face across a short gap, whose values were read at keypoints interpolated between detections (see
  :class:`~retarget.motion.track.MotionTrack`)
- ``cuts`` (optional; written by ``retarget extract``): bool ``[N]``, frames that start a new shot (smoothing does not
  cross them)
"""

from __future__ import annotations

import os
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from retarget.errors import InputError
from retarget.motion.track import DIM, MotionTrack
from retarget.video.atomic import atomic_output

FORMAT = "retarget-motion"
VERSION = 1
_REQUIRED = ("format", "version", "values", "valid", "times", "rate")


def save_motion(track: MotionTrack, path: str | os.PathLike) -> Path:
    """Write ``track`` to ``path`` (compressed npz), atomically. Returns the path."""
    path = Path(path)
    keys = sorted(track.metadata)
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(
                handle,
                format=np.array(FORMAT),
                version=np.array(VERSION, dtype=np.int64),
                values=track.values.astype(np.float32),
                valid=track.valid.astype(bool),
                times=track.times.astype(np.float64),
                rate=np.array([track.rate.numerator, track.rate.denominator], dtype=np.int64),
                metadata_keys=np.array(keys, dtype=str),
                metadata_values=np.array([track.metadata[k] for k in keys], dtype=str),
                **({} if track.filled is None else {"filled": track.filled.astype(bool)}),
                **({} if track.cuts is None else {"cuts": track.cuts.astype(bool)}),
            )
    return path


def load_motion(path: str | os.PathLike) -> MotionTrack:
    """Read and validate a motion file; anything else, or a file without a single valid frame (nothing to
    transfer), raises :class:`InputError` with one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such motion file")
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):  # .npz (zip) or .npy
            # (numpy would try it as a pickle and suggest loading it unsafely)
            raise InputError(f"{path}: not a motion file (not an .npz archive)")
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: not a motion file (a single array, not an .npz archive)")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a readable motion file ({reason})") from error
    return _validate(path, arrays)


def _validate(path: Path, arrays: dict[str, np.ndarray]) -> MotionTrack:
    missing = [name for name in _REQUIRED if name not in arrays]
    if missing:
        raise InputError(f"{path}: not a retarget motion file (missing {', '.join(missing)})")
    fmt = arrays["format"]
    if fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != FORMAT:
        raise InputError(f"{path}: not a retarget motion file (format tag is not {FORMAT!r})")
    version = arrays["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
        raise InputError(f"{path}: motion file version {version!r} is not supported (expected {VERSION})")
    values, valid, times, rate = arrays["values"], arrays["valid"], arrays["times"], arrays["rate"]
    if values.dtype != np.float32 or values.ndim != 2 or values.shape[1] != DIM:
        raise InputError(f"{path}: motion values must be float32 [N, {DIM}], found {values.dtype} {values.shape}")
    n = values.shape[0]
    if valid.dtype != bool or valid.shape != (n,):
        raise InputError(f"{path}: 'valid' must be bool [{n}], found {valid.dtype} {valid.shape}")
    if times.dtype != np.float64 or times.shape != (n,):
        raise InputError(f"{path}: 'times' must be float64 [{n}], found {times.dtype} {times.shape}")
    if not np.all(np.isfinite(times)) or (n > 1 and not np.all(np.diff(times) > 0)):
        raise InputError(f"{path}: motion timestamps are not finite and strictly increasing")
    if not valid.any():
        raise InputError(f"{path}: the motion file has no frame with a face ({n} frames, none valid)" if n
                         else f"{path}: the motion file has no frames")
    if not np.all(np.isfinite(values[valid])):
        raise InputError(f"{path}: motion values contain NaN or infinity in valid frames")
    if rate.dtype.kind not in "iu" or rate.shape != (2,) or rate[0] <= 0 or rate[1] <= 0:
        raise InputError(f"{path}: 'rate' must be two positive integers (numerator, denominator), found {rate!r}")
    keys = arrays.get("metadata_keys", np.array([], dtype=str))
    items = arrays.get("metadata_values", np.array([], dtype=str))
    text_arrays = keys.dtype.kind == "U" and items.dtype.kind == "U"
    if keys.shape != items.shape or keys.ndim != 1 or (keys.size and not text_arrays):
        raise InputError(f"{path}: motion metadata is malformed")
    optional = {name: arrays.get(name) for name in ("filled", "cuts")}  # files of earlier versions lack them
    for name, array in optional.items():
        if array is not None and (array.dtype != bool or array.shape != (n,)):
            raise InputError(f"{path}: '{name}' must be bool [{n}], found {array.dtype} {array.shape}")
    return MotionTrack(
        values=values,
        valid=valid,
        times=times,
        rate=Fraction(int(rate[0]), int(rate[1])),
        metadata=dict(zip(keys.tolist(), items.tolist())),
        filled=optional["filled"],
        cuts=optional["cuts"],
    )
