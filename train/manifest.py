"""The annotated-data layout written by :mod:`train.annotate` and read by the training datasets.

::

    DATA/
      annotation.json           {"format": 1, "resolution": S, "sampling": {"fps": F or null, "faces": "largest"|"all",
                                 "min_face": pixels}}  (sampling: absent in folders of earlier versions)
      inputs.jsonl              one line per processed input file:
                                {"input": rel. path, "key": str, "kind": "image"|"video", "status": "ok"|"no-face"|
                                 "unreadable", "samples": n, "message": str}
      manifest.jsonl            one line per sample:
                                {"id": "<key>/<row>", "input": rel. path, "kind": "image"|"video", "arrays": key,
                                 "row": r, "clip": key for video frames else null, "frame": frame number or null,
                                 "time": seconds from the clip's first frame or null,
                                 "box": [x0, y0, x1, y1] face box in the input, "score": detection score}
      arrays/<key>/identity.npy   float32 [n, 512]   ArcFace embeddings (L2-normalised)
      arrays/<key>/expression.npy float32 [n, 55]    SMIRK values: expression 50, eyelid 2, jaw 3
      arrays/<key>/crops.npy      uint8 [n, S, S, 3] FFHQ-aligned RGB crops at the training resolution

An input's arrays are written before its lines, and an input counts as done once its line is in
``inputs.jsonl``; :func:`open_for_append` drops manifest lines of inputs that were not finished, so an
interrupted run resumes cleanly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from retarget.errors import InputError

FORMAT_VERSION = 1
ANNOTATION_FILE = "annotation.json"
INPUTS_FILE = "inputs.jsonl"
MANIFEST_FILE = "manifest.jsonl"
ARRAYS_DIR = "arrays"
ARRAY_NAMES = ("identity", "expression", "crops")


@dataclass(frozen=True)
class SampleRecord:
    """One manifest line (see the module docstring for the meaning of each field)."""

    id: str
    input: str
    kind: str
    arrays: str
    row: int
    clip: str | None = None
    frame: int | None = None
    time: float | None = None
    box: tuple[float, float, float, float] | None = None
    score: float | None = None

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["box"] = None if self.box is None else [round(float(v), 2) for v in self.box]
        return json.dumps(data)

    @classmethod
    def from_json(cls, line: str) -> "SampleRecord":
        data = json.loads(line)
        box = data.get("box")
        return cls(
            id=data["id"], input=data["input"], kind=data["kind"], arrays=data["arrays"], row=int(data["row"]),
            clip=data.get("clip"), frame=data.get("frame"), time=data.get("time"),
            box=None if box is None else tuple(box), score=data.get("score"),
        )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def read_resolution(data_dir: str | os.PathLike) -> int:
    """The crop resolution of an annotated data folder; InputError if it is not one."""
    path = Path(data_dir) / ANNOTATION_FILE
    try:
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {info.get('format')}, this version reads {FORMAT_VERSION}")
        return int(info["resolution"])
    except FileNotFoundError:
        raise InputError(f"{data_dir} is not an annotated data folder (no {ANNOTATION_FILE}; "
                         "run python -m train.annotate)")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _option_text(option: str, value) -> str:
    """A sampling setting as it is given on the command line: ``--fps 10.0``, or ``no --fps`` (left out)."""
    return f"no {option}" if value is None else f"{option} {value}"


def read_manifest(data_dir: str | os.PathLike) -> list[SampleRecord]:
    """All samples of finished inputs, in file order."""
    data_dir = Path(data_dir)
    read_resolution(data_dir)
    done = {json.loads(line)["key"] for line in _read_lines(data_dir / INPUTS_FILE)}
    records = []
    for number, line in enumerate(_read_lines(data_dir / MANIFEST_FILE), 1):
        try:
            record = SampleRecord.from_json(line)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{data_dir / MANIFEST_FILE}:{number}: not a sample line ({exc})") from exc
        if record.arrays in done:
            records.append(record)
    return records


class ManifestWriter:
    """Appends finished inputs to a data folder; :meth:`done` lists input paths already processed."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.inputs: dict[str, dict] = {}
        for line in _read_lines(data_dir / INPUTS_FILE):
            entry = json.loads(line)
            self.inputs[entry["input"]] = entry

    def done(self, rel_input: str) -> bool:
        return rel_input in self.inputs

    def arrays_dir(self, key: str) -> Path:
        return self.data_dir / ARRAYS_DIR / key

    def add(self, rel_input: str, key: str, kind: str, status: str, records: list[SampleRecord],
            message: str = "") -> None:
        """Record one finished input: its sample lines first, then its line in ``inputs.jsonl``."""
        with open(self.data_dir / MANIFEST_FILE, "a") as manifest:
            for record in records:
                manifest.write(record.to_json() + "\n")
        entry = {"input": rel_input, "key": key, "kind": kind, "status": status, "samples": len(records),
                 "message": message}
        with open(self.data_dir / INPUTS_FILE, "a") as inputs:
            inputs.write(json.dumps(entry) + "\n")
        self.inputs[rel_input] = entry


#: How the ``sampling`` settings of ``annotation.json`` are spelled on the command line, for messages.
SAMPLING_OPTIONS = {"fps": "--fps", "faces": "--faces", "min_face": "--min-face"}


def open_for_append(data_dir: str | os.PathLike, resolution: int, sampling: dict | None = None) -> ManifestWriter:
    """Create or reopen a data folder for annotation at ``resolution``, with the ``sampling`` settings that decide
    which samples an input gives (``{"fps", "faces", "min_face"}``, recorded in ``annotation.json``).

    Reopening checks that the resolution and the recorded sampling settings match (a folder of an earlier version,
    which recorded none, is not checked for them), so that one folder never mixes samples taken two ways, and
    drops manifest lines of inputs that have no ``inputs.jsonl`` line (an interrupted input is then annotated
    again from scratch).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    info_path = data_dir / ANNOTATION_FILE
    if info_path.is_file():
        existing = read_resolution(data_dir)
        if existing != resolution:
            raise InputError(f"{data_dir} holds {existing}px crops; annotate it again at --resolution {existing} "
                             f"or use a new folder")
        recorded = json.loads(info_path.read_text()).get("sampling") or {}
        for name, value in (sampling or {}).items():
            if name in recorded and recorded[name] != value:
                option = SAMPLING_OPTIONS.get(name, name)
                was, now = _option_text(option, recorded[name]), _option_text(option, value)
                raise InputError(f"{data_dir} was annotated with {was}, not {now}; annotate it again with {was} "
                                 "or use a new folder")
    else:
        info = {"format": FORMAT_VERSION, "resolution": resolution}
        if sampling is not None:
            info["sampling"] = sampling
        info_path.write_text(json.dumps(info))
    done = {json.loads(line)["key"] for line in _read_lines(data_dir / INPUTS_FILE)}
    lines = _read_lines(data_dir / MANIFEST_FILE)
    kept = [line for line in lines if json.loads(line)["arrays"] in done]
    if len(kept) != len(lines):
        tmp = data_dir / (MANIFEST_FILE + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, data_dir / MANIFEST_FILE)
    return ManifestWriter(data_dir)
