"""The files of an evaluation: ``metrics.json``, ``per_frame.csv`` and a self-contained ``report.html``.

``report.html`` needs nothing but itself: its plots (matplotlib, Agg) and the contact sheet are PNGs embedded as
``data:`` URIs; it loads no script, font or style from anywhere. Each summary number sits in a table cell with
``data-key`` = its dotted path in ``metrics.json`` (e.g. ``identity.arcface.mean``), printed with 4 significant
digits (:func:`format_number`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import InputError
from ..jobs.common import write_problem
from ..jobs.frames import frames_of_span
from ..motion.plot import DEFAULT_CHANNELS, curves_figure
from ..motion.track import MotionTrack, channel_index
from ..video.atomic import atomic_output
from ..video.reader import VideoReader
from .clip import DEFINITIONS, ClipEvaluation
from .panels import output_reader

__all__ = ["csv_columns", "format_number", "check_report_dir", "per_frame_rows", "report_html", "write_report"]

#: Channels whose target and achieved values go into the CSV (and the curves plot).
CSV_CHANNELS = DEFAULT_CHANNELS

#: Frames in the contact sheet (evenly spread over the output).
CONTACT_FRAMES = 6


def format_number(value) -> str:
    """A summary number as the report prints it: 4 significant digits, ``n/a`` for ``None``/NaN, ``inf``."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):  # per-frame float32 too
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.4g}"


def check_report_dir(path) -> Path:
    """``path`` as a Path after checking it can hold the report, before anything is computed: not a file, its
    parent folder exists, and the folder that must take new entries (``path`` itself when it exists, else its
    parent, where it will be created) does: probed by creating and removing an empty file
    (:func:`~retarget.jobs.common.write_problem`: permissions, read-only mounts and ``/proc`` alike). One-line
    :class:`InputError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: folder does not exist")
    reason = write_problem(path / "metrics.json" if path.is_dir() else path)
    if reason is not None:
        what = "write the report into it" if path.is_dir() else f"create the report folder in {path.parent}"
        raise InputError(f"{path}: cannot {what} ({reason})")
    return path


def csv_columns(evaluation: ClipEvaluation) -> list[str]:
    """The CSV's header for ``evaluation`` (one identity column per judge)."""
    columns = ["frame", "time", "reference_frame", "output_face", "reference_face"]
    columns += [f"identity_{name}" for name in evaluation.identity]
    columns += ["exp_mse", "expression_mse", "eyelid_mse", "jaw_mse"]
    for name in CSV_CHANNELS:
        columns += [f"target_{name}", f"achieved_{name}"]
    columns += ["flicker", "reference_flicker"]
    return columns


def per_frame_rows(evaluation: ClipEvaluation) -> list[list]:
    """One row per output frame, in :func:`csv_columns` order; empty cells where a value is not defined."""
    e = evaluation
    errors = e.frame_errors()

    def cell(value):
        return "" if value is None or not np.isfinite(value) else f"{float(value):.6g}"

    rows = []
    for k in range(len(e.times)):
        row = [k, f"{e.times[k]:.6f}", int(e.reference_index[k]), int(e.output_face[k]), int(e.reference_face[k])]
        row += [cell(values[k]) for values in e.identity.values()]
        row += [cell(errors[key][k]) for key in ("exp_mse", "expression", "eyelid", "jaw")]
        for name in CSV_CHANNELS:
            index = channel_index(name)
            row += [cell(e.target[k, index]) if e.target_valid[k] else "",
                    cell(e.achieved[k, index]) if e.output_face[k] else ""]
        row += [cell(e.flicker[k]), cell(e.reference_flicker[k])]
        rows.append(row)
    return rows


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(rows: int, height: float = 2.2) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(10, height * rows + 0.6), dpi=90)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def curves_png(evaluation: ClipEvaluation) -> bytes:
    """Target vs achieved curves of the main channels (:data:`~retarget.motion.plot.DEFAULT_CHANNELS`)."""
    e = evaluation
    achieved = MotionTrack(e.achieved, e.output_face, e.times, 1)
    target = MotionTrack(e.target, e.target_valid, e.times, 1)
    return _png(curves_figure(achieved, target, DEFAULT_CHANNELS, dpi=90, labels=("achieved (output)", "target")))


def identity_png(evaluation: ClipEvaluation) -> bytes:
    """Identity cosine over time, one line per judge."""
    figure, (axis,) = _figure(1, 2.6)
    for name, values in evaluation.identity.items():
        axis.plot(evaluation.times, values, lw=1.2, label=name)
    axis.set_ylabel("cosine to identity")
    axis.set_xlabel("time (s)")
    axis.grid(alpha=0.3)
    _finish_axis(axis, evaluation.times)
    figure.tight_layout()
    return _png(figure)


def _finish_axis(axis, times: np.ndarray) -> None:
    """The clip's whole time range on the x axis; a legend where it covers the fewest points, or, when no line has
    a finite value (no frame with a face), a note saying so instead of an empty plot."""
    if len(times) > 1:
        axis.set_xlim(float(times[0]), float(times[-1]))
    if any(np.isfinite(line.get_ydata()).any() for line in axis.get_lines()):
        axis.legend(loc="best", fontsize="small")
    else:
        axis.text(0.5, 0.5, "no frame to plot (no face in the output, or too few in a row)", ha="center",
                  va="center", transform=axis.transAxes, color="0.4")


def _frame_jitter(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per frame: mean |second difference| over the values, centred on the frame (NaN without 3 valid frames)."""
    result = np.full(len(values), np.nan)
    if len(values) >= 3:
        flat = values.reshape(len(values), -1).astype(np.float64)
        second = np.abs(flat[2:] - 2 * flat[1:-1] + flat[:-2]).mean(axis=1)
        triples = valid[:-2] & valid[1:-1] & valid[2:]
        result[1:-1] = np.where(triples, second, np.nan)
    return result


def jitter_png(evaluation: ClipEvaluation) -> bytes:
    """Per-frame jitter of the expression values and of the normalised landmarks, output vs driving/reference."""
    e = evaluation
    figure, axes = _figure(2)
    steady = e.output_face & e.driving_valid
    axes[0].plot(e.times, _frame_jitter(e.driving_values, steady), lw=0.9, color="0.5", label="driving")
    axes[0].plot(e.times, _frame_jitter(e.achieved, steady), lw=1.2, color="C0", label="output")
    axes[0].set_ylabel("expression jitter")
    both = e.output_face & e.reference_face
    axes[1].plot(e.times, _frame_jitter(e.reference_landmarks, both), lw=0.9, color="0.5", label="reference")
    axes[1].plot(e.times, _frame_jitter(e.landmarks, both), lw=1.2, color="C1", label="output")
    axes[1].set_ylabel("landmark jitter")
    axes[1].set_xlabel("time (s)")
    for axis in axes:
        axis.grid(alpha=0.3)
        _finish_axis(axis, e.times)
    figure.tight_layout()
    return _png(figure)


def contact_png(evaluation: ClipEvaluation, count: int = CONTACT_FRAMES) -> bytes:
    """Sampled frames, reference (driving or original) | output (the part that was scored: a side-by-side
    render's result panel), with each frame's number and identity cosines. Decodes only those frames."""
    e = evaluation
    frames = len(e.times)
    picks = np.unique(np.linspace(0, frames - 1, min(count, frames)).round().astype(int))
    reference_path = e.inputs.original if e.inputs.mode == "edit" else e.inputs.driving
    output, reference_reader = output_reader(e.inputs.output, e.output_panel), VideoReader(reference_path)
    figure = Figure(figsize=(6, 2.4 * len(picks)), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(picks), 2, squeeze=False)
    for row, k in zip(axes, picks):
        m = int(e.reference_index[k])
        pictures = (frames_of_span(reference_reader, m, m + 1)[0], frames_of_span(output, k, k + 1)[0])
        scores = ", ".join(f"{name} {format_number(values[k])}" for name, values in e.identity.items())
        titles = (f"{reference_path.name} frame {m}", f"output frame {k}" + (f": {scores}" if scores else ""))
        for axis, picture, title in zip(row, pictures, titles):
            axis.imshow(picture)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    return _png(figure)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _summary_rows(summary: dict) -> list[tuple[str, object, str, str]]:
    """(dotted key, value, direction, definition) for the report's table."""
    rows = []
    coverage = summary["coverage"]
    rows.append(("coverage.coverage", coverage["coverage"], *DEFINITIONS["coverage"]))
    for name, values in summary["identity"].items():
        for key in ("mean", "p05", "drift"):
            direction, text = DEFINITIONS[f"identity.{key}"]
            rows.append((f"identity.{name}.{key}", values[key], direction, f"{text} ({name})"))
    for key in ("exp_mse", "expression", "eyelid", "jaw", "mean_correlation"):
        rows.append((f"expression.{key}", summary["expression"][key], *DEFINITIONS[f"expression.{key}"]))
    for key in ("expression_jitter_ratio", "landmark_jitter_ratio", "flicker", "flicker_ratio"):
        rows.append((f"stability.{key}", summary["stability"][key], *DEFINITIONS[f"stability.{key}"]))
    return rows


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 14px; }
td.value { font-family: monospace; text-align: right; white-space: nowrap; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _panel_note(panel: dict | None) -> str:
    """The report's sentence on a side-by-side render's scored panel (empty for a whole-frame output)."""
    if panel is None:
        return ""
    x0, y0, x1, y1 = panel["box"]
    return (f" A side-by-side render ({html.escape(panel['layout'])}): only the result panel, columns {x0}-{x1 - 1}"
            f" and rows {y0}-{y1 - 1} of each frame, is scored.")


def report_html(evaluation: ClipEvaluation, images: dict[str, bytes]) -> str:
    """The report page: the summary table and the embedded PNGs (``images``: title -> PNG bytes)."""
    summary = evaluation.summary
    inputs = summary["inputs"]
    described = ", ".join(f"{key} <code>{html.escape(os.path.basename(value))}</code>"
                          for key, value in inputs.items() if isinstance(value, str) and key != "smooth")
    table = "\n".join(
        f'<tr><td>{html.escape(key)}</td><td class="value" data-key="{html.escape(key)}">'
        f"{html.escape(format_number(value))}</td><td>{html.escape(direction)}</td><td>{html.escape(text)}</td></tr>"
        for key, value, direction, text in _summary_rows(summary))
    figures = "\n".join(f"<h2>{html.escape(title)}</h2>\n<img alt=\"{html.escape(title)}\" src=\"{_data_uri(png)}\">"
                        for title, png in images.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>retarget eval: {html.escape(Path(inputs["output"]).name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Evaluation of {html.escape(Path(inputs["output"]).name)}</h1>
<p>{html.escape(summary["mode"])} render, {summary["frames"]} frames; {described}; targets smoothed with
<code>{html.escape(str(inputs["smooth"]))}</code>. Frames with a face in the output:
{summary["coverage"]["output_face_frames"]}.{_panel_note(summary.get("output_panel"))}</p>
<h2>Summary</h2>
<table id="summary">
<thead><tr><th>metric</th><th>value</th><th>better</th><th>definition</th></tr></thead>
<tbody>
{table}
</tbody>
</table>
{figures}
</body>
</html>
"""


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(evaluation: ClipEvaluation, folder) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_frame.csv`` and ``report.html`` into ``folder`` (created if missing; its
    parent must exist), each atomically, after everything has been computed. Returns the three paths by name."""
    folder = check_report_dir(folder)
    images = {
        "Target vs achieved expression": curves_png(evaluation),
        "Identity over time": identity_png(evaluation),
        "Jitter": jitter_png(evaluation),
        "Contact sheet (reference | output)": contact_png(evaluation),
    }
    page = report_html(evaluation, images)
    metrics_text = json.dumps(evaluation.summary, indent=1, allow_nan=False, default=_json_default)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(csv_columns(evaluation))
    writer.writerows(per_frame_rows(evaluation))
    folder.mkdir(exist_ok=True)
    paths = {}
    for name, content in (("metrics.json", metrics_text), ("per_frame.csv", text.getvalue()),
                          ("report.html", page)):
        with atomic_output(folder / name) as temporary:
            Path(temporary).write_text(content, encoding="utf-8")
        paths[name] = folder / name
    return paths
