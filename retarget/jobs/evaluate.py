"""``retarget eval``: score a rendered clip (identity, expression fidelity, stability, coverage) into a report
folder (``metrics.json``, ``per_frame.csv``, ``report.html``); see :mod:`retarget.evaluation.clip`."""

from __future__ import annotations

from pathlib import Path

from retarget.devices import resolve_device
from retarget.evaluation.clip import EvalInputs, evaluate_clip, plan_evaluation
from retarget.evaluation.report import check_report_dir, write_report
from retarget.faces.models import FaceModels
from retarget.jobs.common import MEMORY_BUDGET_GIB


def evaluate_job(output, report_dir, *, driving=None, identity=None, original=None, motion=None,
                 start: float | None = None, end: float | None = None, smooth: str = "kalman", models=None,
                 device: str | None = None, smirk_channels: str = "rgb", chunk_size: int = 64,
                 memory_budget: float = MEMORY_BUDGET_GIB, progress: bool = True) -> dict[str, Path]:
    """Evaluate ``output`` and write the report into ``report_dir``; returns the written paths by file name.
    Everything the arguments alone decide is checked before any model loads or clip is scanned: the report folder
    can be written (:func:`~retarget.evaluation.report.check_report_dir`), then the inputs
    (:func:`~retarget.evaluation.clip.plan_evaluation`: files, frame counts, motion file, photo, side-by-side
    layout)."""
    report_dir = check_report_dir(report_dir)
    inputs = EvalInputs(output, driving=driving, identity=identity, original=original, motion=motion, start=start,
                        end=end, smooth=smooth)
    plan = plan_evaluation(inputs)
    faces = FaceModels(models, device=resolve_device(device), channel_order=smirk_channels).load()
    evaluation = evaluate_clip(inputs, faces, chunk_size=chunk_size, memory_budget=memory_budget,
                               progress=progress, plan=plan)
    return write_report(evaluation, report_dir)
