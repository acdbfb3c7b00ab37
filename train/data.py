"""Datasets over an annotated data folder (see :mod:`train.manifest`) and the sampling of training batches.

* :class:`FaceSamples`: one item per sample: the aligned crop as ``pixels [3, S, S]`` in [-1, 1], the raw
  ArcFace ``identity [512]`` and the ``expression [55]`` vector (stage 1).
* :class:`ReferencePairs`: one item per target frame that has a partner: the target's crop and expression with
  the ``identity`` and ``reference_pixels`` of another frame of the same clip at most ``window`` seconds away
  (stage 2). The partner is drawn from ``(seed, epoch, index)``, so a run is reproducible and resumable.
* :func:`epoch_batches`: the index batches one process reads in one epoch (shuffled from ``(seed, epoch)``,
  sharded across processes, last partial batch dropped).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retarget.errors import InputError

from .manifest import ARRAYS_DIR, SampleRecord, read_manifest, read_resolution

log = logging.getLogger("train")


class FaceSamples(Dataset):
    """Samples of an annotated data folder, optionally resized to ``resolution``.

    Arrays are memory-mapped on first use (per worker process), so a large folder costs little memory.
    """

    def __init__(self, data_dir: str | os.PathLike, resolution: int | None = None):
        self.data_dir = Path(data_dir)
        self.stored_resolution = read_resolution(self.data_dir)
        self.resolution = resolution or self.stored_resolution
        self.records: list[SampleRecord] = read_manifest(self.data_dir)
        if not self.records:
            raise InputError(f"{self.data_dir} holds no samples (run python -m train.annotate on a folder with faces)")
        if self.resolution != self.stored_resolution:
            log.warning("%s holds %d px crops; they are resized to %d px as they are read (%s)", self.data_dir,
                        self.stored_resolution, self.resolution,
                        "detail is lost: annotate at --resolution %d for full detail" % self.resolution
                        if self.resolution > self.stored_resolution else "annotating at that size saves the work")
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict:
        # Worker processes open their own memory maps; pickling open ones would copy whole arrays.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def _arrays_of(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._arrays:
            folder = self.data_dir / ARRAYS_DIR / key
            try:
                self._arrays[key] = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                                     for name in ("identity", "expression", "crops")}
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read the arrays of {folder}: {exc}") from exc
        return self._arrays[key]

    def pixels(self, index: int) -> torch.Tensor:
        """The aligned crop of sample ``index`` as float ``[3, S, S]`` in [-1, 1]."""
        record = self.records[index]
        crop = np.asarray(self._arrays_of(record.arrays)["crops"][record.row])
        if crop.shape[0] != self.resolution:
            crop = np.asarray(Image.fromarray(crop).resize((self.resolution, self.resolution), Image.LANCZOS))
        return torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 127.5 - 1.0

    def identity(self, index: int) -> torch.Tensor:
        record = self.records[index]
        return torch.from_numpy(np.array(self._arrays_of(record.arrays)["identity"][record.row], dtype=np.float32))

    def expression(self, index: int) -> torch.Tensor:
        record = self.records[index]
        return torch.from_numpy(np.array(self._arrays_of(record.arrays)["expression"][record.row], dtype=np.float32))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels(index), "identity": self.identity(index), "expression": self.expression(index)}


def clip_partners(records: list[SampleRecord], window: float) -> list[list[int]]:
    """For every record, the indices of the other frames of its clip at most ``window`` seconds away.

    Images (no clip) and frames alone in their window get an empty list.
    """
    by_clip: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if record.clip is not None and record.time is not None:
            by_clip[record.clip].append(index)
    partners: list[list[int]] = [[] for _ in records]
    for members in by_clip.values():
        members.sort(key=lambda i: (records[i].time, records[i].frame or 0))
        times = [records[i].time for i in members]
        for position, index in enumerate(members):
            lo = bisect.bisect_left(times, times[position] - window - 1e-9)
            hi = bisect.bisect_right(times, times[position] + window + 1e-9)
            partners[index] = [members[j] for j in range(lo, hi)
                               if j != position and records[members[j]].frame != records[index].frame]
    return partners


class ReferencePairs(Dataset):
    """Reference/target pairs: two different frames of one clip at most ``window`` seconds apart.

    Item ``i`` is target frame ``targets[i]`` with ``pixels`` and ``expression`` of the target, and ``identity``
    and ``reference_pixels`` of a partner frame (the identity comes from the reference, as at inference).
    """

    def __init__(self, samples: FaceSamples, window: float, seed: int = 0):
        if window <= 0:
            raise InputError(f"--window must be positive, got {window}")
        self.samples, self.window, self.seed = samples, float(window), int(seed)
        self.partners = clip_partners(samples.records, self.window)
        self.targets = [i for i, p in enumerate(self.partners) if p]
        if not self.targets:
            raise InputError(f"{samples.data_dir} has no two frames of one clip within {window} s "
                             "(stage 2 needs annotated videos)")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def reference_of(self, index: int) -> int:
        """The sample index used as reference for item ``index`` in the current epoch."""
        options = self.partners[self.targets[index]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return options[int(rng.integers(len(options)))]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        target, reference = self.targets[index], self.reference_of(index)
        return {
            "pixels": self.samples.pixels(target),
            "expression": self.samples.expression(target),
            "identity": self.samples.identity(reference),
            "reference_pixels": self.samples.pixels(reference),
        }


def epoch_batches(length: int, batch_size: int, seed: int, epoch: int, num_processes: int = 1,
                  process_index: int = 0) -> list[list[int]]:
    """Index batches of one process for one epoch.

    The permutation comes from ``(seed, epoch)`` and is the same on every process; process ``p`` takes every
    ``num_processes``-th index starting at ``p`` after the tail that does not fill a batch on every process is
    dropped, so all processes run the same number of steps.
    """
    per_step = batch_size * num_processes
    usable = length // per_step * per_step
    if usable == 0:
        raise InputError(f"{length} training items are fewer than one step needs "
                         f"({batch_size} per process x {num_processes} processes)")
    generator = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    order = torch.randperm(length, generator=generator)[:usable].tolist()
    mine = order[process_index::num_processes]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
