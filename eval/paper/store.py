"""The run folder of the image protocol: the grid's images and their records, kept across interrupted runs.

Layout under ``OUT``::

    run-key.json                          what determines the pixels (settings + model files' identity)
    images/<condition>/<identity>__<expression>.png
    records/<condition>/<identity>__<expression>.json   {"render": {...}, "scores": {...}}

An image counts as done when its PNG and its record exist and the record's ``render`` entry (the identity photo's
and the expression source's fingerprints and the expression's name) matches the current inputs. A run whose key
differs from ``run-key.json`` (other model files, steps, seed, ...) removes ``images/`` and ``records/`` and starts
over. Every file is written atomically (:mod:`retarget.video.atomic`), so a killed run leaves whole files only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retarget.errors import InputError
from retarget.video.atomic import atomic_output, discard

from .inputs import Expression, Identity

log = logging.getLogger(__name__)

KEY_FILE = "run-key.json"
SUBFOLDERS = ("images", "records")
OUTPUT_FILES = ("per_image.csv", "results.json", "table.md")


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image ``[H, W, 3]`` to ``path`` as PNG, atomically."""
    with atomic_output(path) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")


@dataclass(frozen=True, eq=False)
class Item:
    """One cell of the grid: ``condition`` (``"id"`` or ``"reference"``), its identity and expression."""

    condition: str
    identity: Identity
    expression: Expression

    @property
    def name(self) -> str:
        return f"{self.identity.name}__{self.expression.name}"

    @property
    def noise_index(self) -> int:
        """The image's noise number (a stable hash of its identity and expression names): the two conditions of
        a cell start from the same noise, and the noise does not depend on the batch or on ``--limit``."""
        digest = hashlib.sha256(f"{self.identity.name}\0{self.expression.name}".encode()).hexdigest()
        return int(digest[:8], 16)

    def render_record(self) -> dict:
        """What determines this image besides the run key: the input files' fingerprints and the expression's
        name (the target values are a function of these and the keyed models and settings; they are not compared
        themselves, since re-extracting them in other batches may change their last bits)."""
        return {"identity": self.identity.fingerprint, "expression": self.expression.fingerprint,
                "expression_name": self.expression.name}


def check_run_folder(root: Path) -> None:
    """Raise :class:`InputError` unless ``root`` can be a run folder: new, empty, or one with a ``run-key.json``."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a new or empty folder")
    if not (root / KEY_FILE).is_file() and root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root} is not empty and has no {KEY_FILE}: not a run folder of this protocol; "
                         "give a new or empty folder")


class RunStore:
    """The images and records of one run folder (see the module doc). ``key``: JSON-ready run key."""

    def __init__(self, out_dir, key: dict):
        self.root = Path(out_dir)
        self.key = json.loads(json.dumps(key))  # normalised as it will read back
        self.started_over = False

    def open(self) -> RunStore:
        """Create the folder; remove the outputs of a run with another key (logged). A folder that is not empty
        but has no ``run-key.json`` (written first) is not a run folder: :class:`InputError`, nothing is written
        or removed."""
        key_path = self.root / KEY_FILE
        check_run_folder(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        previous = None
        if key_path.is_file():
            try:
                previous = json.loads(key_path.read_text())
            except (OSError, ValueError):
                previous = None
        if previous != self.key:
            if previous is not None:
                log.warning("%s: the models or settings differ from the previous run's: starting over", self.root)
                self.started_over = True
            for sub in SUBFOLDERS:
                shutil.rmtree(self.root / sub, ignore_errors=True)
            for name in OUTPUT_FILES:
                discard(self.root / name)
            write_json(key_path, self.key)
        return self

    def image_path(self, item: Item) -> Path:
        return self.root / "images" / item.condition / f"{item.name}.png"

    def record_path(self, item: Item) -> Path:
        return self.root / "records" / item.condition / f"{item.name}.json"

    def record(self, item: Item) -> dict | None:
        """The item's record when its image is done for the current inputs, else None."""
        path = self.record_path(item)
        if not (path.is_file() and self.image_path(item).is_file()):
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("render") == item.render_record() else None

    def load_image(self, item: Item) -> np.ndarray:
        with Image.open(self.image_path(item)) as image:
            return np.asarray(image.convert("RGB"))

    def save(self, item: Item, image: np.ndarray, scores: dict) -> None:
        """Write the image, then its record (the record marks it done)."""
        for path in (self.image_path(item), self.record_path(item)):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_png(self.image_path(item), image)
        self.save_scores(item, scores)

    def save_scores(self, item: Item, scores: dict) -> None:
        write_json(self.record_path(item), {"render": item.render_record(), "scores": scores})


def grid(conditions: list[str], identities: list[Identity], expressions: list[Expression]) -> list[Item]:
    """Every (condition, identity, expression) in that order: conditions outermost, expressions innermost.
    Two cells whose file names would be the same (``a__b`` x ``c`` and ``a`` x ``b__c``) are an
    :class:`InputError`."""
    items = [Item(c, i, e) for c in conditions for i in identities for e in expressions]
    names: dict[str, Item] = {}
    for item in items[:len(identities) * len(expressions)]:
        other = names.setdefault(item.name, item)
        if other is not item:
            raise InputError(f"identity {item.identity.name!r} with expression {item.expression.name!r} and identity "
                             f"{other.identity.name!r} with expression {other.expression.name!r} would share the "
                             f"file name {item.name}.png: rename one of the files")
    return items


def batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive runs of at most ``batch_size`` items of one condition (several identities may share a batch).
    The split depends only on the grid, so a resumed run renders the same batches (less the done images)."""
    out: list[list[Item]] = []
    for item in items:
        if out and out[-1][0].condition == item.condition and len(out[-1]) < batch_size:
            out[-1].append(item)
        else:
            out.append([item])
    return out
