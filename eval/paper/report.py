"""The protocol's outputs: per-image rows, the per-condition summary, and the three files written from them.

* ``per_image.csv``: one row per generated image (condition, identity, expression, image path, face found,
  scored, ID similarity per judge, 3D Exp-MSE and its parts);
* ``results.json``: the summary per condition, the inputs (counts and skipped files), the settings and run key;
* ``table.md``: the paper's table, one row per condition.

Summary per condition: ``images``; ``faces_found`` (the detector found a face in the generated image);
``scored`` (images with scores); ``id_similarity``: per judge the mean cosine over the scored images (higher is
better); ``exp``: :func:`retarget.evaluation.metrics.exp_mse` over the scored images' re-extracted values against
their targets (``exp_mse`` is the table's 3D Exp-MSE, lower is better); ``fid`` when computed (lower is better).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from retarget.evaluation.metrics import exp_mse
from retarget.video.atomic import atomic_output

from .scoring import EXP_KEYS

CONDITION_LABELS = {"id": "ID-conditioned", "reference": "+ reference adapter"}
JUDGE_LABELS = {"arcface": "ArcFace", "sface": "SFace"}


def per_image_rows(entries: list[tuple], judges: list[str], root: Path) -> list[dict]:
    """CSV rows from ``(item, image path, scores)`` triples (scores as :func:`~eval.paper.scoring.score_images`
    returns them)."""
    rows = []
    for item, image_path, scores in entries:
        row = {"condition": item.condition, "identity": item.identity.name, "expression": item.expression.name,
               "image": Path(image_path).relative_to(root).as_posix(), "face_found": int(scores["face_found"]),
               "scored": int(scores["scored"])}
        for judge in judges:
            row[f"id_{judge}"] = _cell(scores["id"].get(judge))
        for key in EXP_KEYS:
            row[key if key == "exp_mse" else f"exp_{key}"] = _cell(scores["exp"][key])
        rows.append(row)
    return rows


def _cell(value) -> str:
    return "" if value is None else repr(float(value))


def summarise(entries: list[tuple], judges: list[str], conditions: list[str]) -> dict:
    """``{condition: summary}`` (see the module doc) from ``(item, image path, scores)`` triples."""
    summary = {}
    for condition in conditions:
        scores = [s for item, _, s in entries if item.condition == condition]
        scored = [s for s in scores if s["scored"]]
        entry = {"images": len(scores), "faces_found": sum(s["face_found"] for s in scores), "scored": len(scored),
                 "id_similarity": {}, "exp": {key: None for key in EXP_KEYS}}
        for judge in judges:
            values = [s["id"][judge] for s in scored if s["id"].get(judge) is not None]
            entry["id_similarity"][judge] = float(np.mean(values)) if values else None
        if scored:
            achieved = np.array([s["achieved"] for s in scored], np.float32)
            targets = np.array([s["target"] for s in scored], np.float32)  # the values each image was given
            metrics = exp_mse(achieved, targets, np.ones(len(scored), bool))
            entry["exp"] = {key: float(metrics[key]) for key in EXP_KEYS}
        summary[condition] = entry
    return summary


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_markdown(summary: dict, judges: list[str], with_fid: bool) -> str:
    """The paper's table: one row per condition (see the module doc for the columns)."""
    header = ["Condition", "Images"] + [f"ID sim. ({JUDGE_LABELS.get(j, j)}) ↑" for j in judges] + ["3D Exp-MSE ↓"]
    header += ["FID ↓"] * with_fid + ["Faces found"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for condition, entry in summary.items():
        cells = [CONDITION_LABELS.get(condition, condition), str(entry["images"])]
        cells += [_number(entry["id_similarity"][j], 4) for j in judges]
        cells.append(_number(entry["exp"]["exp_mse"], 4))
        if with_fid:
            cells.append(_number(entry.get("fid"), 3))
        cells.append(f"{entry['faces_found']}/{entry['images']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def write_outputs(root: Path, rows: list[dict], results: dict, table: str) -> None:
    """Write ``per_image.csv``, ``results.json`` and ``table.md`` under ``root``, each atomically."""
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["condition", "identity", "expression", "image"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(root / "per_image.csv", buffer.getvalue())
    write_text(root / "results.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_text(root / "table.md", table)
