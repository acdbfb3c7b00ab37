"""The paper's image protocol: identities x expressions, rendered with and without the reference adapter, scored.

For every identity photo and every target expression, :class:`~retarget.pipeline.ExpressionPipeline` renders one
image per condition (``"id"``: the identity alone; ``"reference"``: plus the identity photo's aligned crop as the
reference image), through :meth:`retarget.jobs.session.RenderSession.render` with per-image noise drawn from the
seed and a stable number of the (identity, expression) pair, so both conditions of a cell start from the same noise
and results do not depend on batching or on an interruption. Batches hold up to ``batch_size`` images of one
condition, several identities per batch when they fit. Each image is scored as it is rendered
(:mod:`eval.paper.scoring`) and saved with its record (:mod:`eval.paper.store`); a rerun reuses the images and
scores already on disk for the same run key, and rescores saved images (without rendering) when the judges or the
scoring of undetected faces changed. At the end the summary and FID (when Inception weights are on this machine)
are computed over the whole grid and the outputs written (:mod:`eval.paper.report`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retarget.errors import InputError, WeightsError
from retarget.jobs.options import JobOptions

from . import fid as fid_module
from .inputs import check_folders, read_expressions, read_identities
from .report import per_image_rows, summarise, table_markdown, write_outputs
from .scoring import score_images
from .store import Item, RunStore, batches, check_run_folder, grid

log = logging.getLogger(__name__)

CONDITIONS = {"both": ["id", "reference"], "off": ["id"], "on": ["reference"]}


@dataclass
class PaperOptions:
    """Settings of one protocol run. ``job``: model and sampling settings (``batch_size`` = images per diffusion
    call). ``identities``/``expressions``: input folders; ``out``: run folder. ``limit``: the first N identities
    (sorted by name) or None for all. ``reference``: ``"both"``, ``"on"`` or ``"off"`` (the conditions).
    ``motion_frames``: expressions taken from each motion file. ``undetected``: ``"skip"`` or ``"template"`` (see
    :mod:`eval.paper.scoring`). ``fid``: compute FID when weights are found; ``inception``: the weights file."""

    job: JobOptions
    identities: Path
    expressions: Path
    out: Path
    limit: int | None = None
    reference: str = "both"
    motion_frames: int = 5
    undetected: str = "skip"
    fid: bool = True
    inception: Path | None = None

    def __post_init__(self):
        checks = [
            (self.limit is None or self.limit >= 1, f"--limit must be >= 1, got {self.limit}"),
            (self.motion_frames >= 1, f"--motion-frames must be >= 1, got {self.motion_frames}"),
            (self.reference in CONDITIONS, f"--reference must be one of {', '.join(CONDITIONS)}"),
            (not Path(self.out).is_file(), f"-o {self.out}: a file exists there; give a folder"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        check_run_folder(self.out)  # before any model loads or input scan


def _stack_or_one(arrays: list[np.ndarray]):
    """One array when every row shares it (keeps the pipeline's per-identity caches hitting), else the list."""
    first = arrays[0]
    return first if all(a is first for a in arrays) else arrays


def _scoring_record(judges, undetected: str) -> dict:
    return {"judges": [judge.name for judge in judges], "undetected": undetected}


def _score(items: list[Item], images: np.ndarray, session, judges, undetected: str) -> list[dict]:
    scores = score_images(images, np.stack([i.expression.values for i in items]),
                          [i.identity.judged for i in items], [i.identity.crop_keypoints for i in items],
                          session.faces, judges, undetected)
    for item, s in zip(items, scores):
        s["scoring"] = _scoring_record(judges, undetected)
        s["target"] = [float(v) for v in item.expression.values]
    return scores


def _render(items: list[Item], session) -> np.ndarray:
    """The images of one batch (one diffusion call): uint8 ``[n, S, S, 3]``."""
    ids = _stack_or_one([i.identity.embedding for i in items])
    embeds = ids if isinstance(ids, np.ndarray) else np.stack(ids)
    reference = None
    if items[0].condition == "reference":
        reference = _stack_or_one([i.identity.reference for i in items])
    return session.render(embeds, np.stack([i.expression.values for i in items]),
                          np.array([i.noise_index for i in items], np.int64), reference, desc="batch")


def run_protocol(options: PaperOptions, session=None) -> dict:
    """Run (or resume) the protocol; returns the results written to ``results.json``. ``session``: a
    :class:`~retarget.jobs.session.RenderSession` built from ``options.job`` to reuse (default: a new one)."""
    from tqdm.auto import tqdm

    from retarget.evaluation.judges import identity_judges
    from retarget.jobs.session import RenderSession

    started = time.perf_counter()
    check_folders(options.identities, options.expressions)
    if session is not None and session.options != options.job:
        raise ValueError("the session was built with other job options than options.job")
    session = session or RenderSession(options.job)
    session.load()
    pipe = session.pipeline
    conditions = CONDITIONS[options.reference]
    if "reference" in conditions and not pipe.has_reference_adapter:
        raise WeightsError(f"the reference condition needs {options.job.models}/ref_adapter/"
                           "pytorch_lora_weights.safetensors (or use --no-reference)")
    judges = identity_judges(session.faces)
    identities, skipped_ids = read_identities(options.identities, session.faces, pipe.image_size, judges,
                                              options.limit)
    expressions, skipped_exprs = read_expressions(options.expressions, session.faces, options.motion_frames)
    log.info("%d identities x %d expressions x %d conditions = %d images", len(identities), len(expressions),
             len(conditions), len(identities) * len(expressions) * len(conditions))

    key = dict(options.job.render_key(), device_type=pipe.device.type, resolved_dtype=str(pipe.dtype),
               protocol="paper-images-1")
    items = grid(conditions, identities, expressions)
    store = RunStore(options.out, key).open()
    scoring = _scoring_record(judges, options.undetected)
    records = {id(item): store.record(item) for item in items}
    done = {id(i) for i in items if records[id(i)] is not None and records[id(i)]["scores"].get("scoring") == scoring}
    rescore = [i for i in items if records[id(i)] is not None and id(i) not in done]
    scores = {id(i): records[id(i)]["scores"] for i in items if id(i) in done}
    reused = len(done)

    rendered = 0
    render_seconds = 0.0
    with tqdm(total=len(items), initial=len(done), unit="image", desc="images",
              disable=not options.job.progress) as bar:
        for batch in batches(rescore, options.job.batch_size):  # saved images, new scoring: no rendering
            new = _score(batch, np.stack([store.load_image(i) for i in batch]), session, judges,
                         options.undetected)
            for item, s in zip(batch, new):
                store.save_scores(item, s)
                scores[id(item)] = s
            bar.update(len(batch))
        for batch in batches(items, options.job.batch_size):
            todo = [i for i in batch if id(i) not in scores]
            if not todo:
                continue
            tick = time.perf_counter()
            images = _render(todo, session)
            render_seconds += time.perf_counter() - tick
            for item, image, s in zip(todo, images, _score(todo, images, session, judges, options.undetected)):
                store.save(item, image, s)
                scores[id(item)] = s
            rendered += len(todo)
            bar.update(len(todo))

    judge_names = [judge.name for judge in judges]
    entries = [(i, store.image_path(i), scores[id(i)]) for i in items]
    summary = summarise(entries, judge_names, conditions)
    fid_note = _add_fid(options, session, summary, identities, store, items)
    results = {
        "conditions": summary,
        "inputs": {"identities": len(identities), "expressions": len(expressions),
                   "skipped": {"identities": skipped_ids, "expressions": skipped_exprs}},
        "judges": judge_names,
        "scoring": scoring,
        "fid": fid_note,
        "run": {"images": len(items), "rendered": rendered, "reused": reused, "rescored": len(rescore),
                "render_seconds": round(render_seconds, 3),
                "seconds": round(time.perf_counter() - started, 3), "started_over": store.started_over},
        "settings": {"steps": options.job.steps, "guidance": options.job.guidance, "seed": options.job.seed,
                     "reference_scale": options.job.reference_scale,
                     "expression_scale": options.job.expression_scale, "batch_size": options.job.batch_size,
                     "device": str(pipe.device), "dtype": str(pipe.dtype), "limit": options.limit,
                     "motion_frames": options.motion_frames},
        "run_key": store.key,
    }
    table = table_markdown(summary, judge_names, with_fid=fid_note["computed"])
    write_outputs(store.root, per_image_rows(entries, judge_names, store.root), results, table)
    for skipped in (skipped_ids, skipped_exprs):
        if skipped:
            log.warning("%d input file(s) skipped (see results.json)", len(skipped))
    return results


def _add_fid(options: PaperOptions, session, summary: dict, identities, store: RunStore, items) -> dict:
    """Add ``fid`` to each condition's summary when Inception weights are found; returns what was done."""
    if not options.fid:
        return {"computed": False, "reason": "--no-fid"}
    weights = fid_module.find_inception_weights(options.inception)
    if weights is None:
        print("FID: no Inception-v3 weights on this machine (give --inception FILE); the FID column is left out",
              file=sys.stderr)
        return {"computed": False, "reason": "no Inception-v3 weights found"}
    if len(identities) < 2:
        print("FID: needs at least 2 identities; the FID column is left out", file=sys.stderr)
        return {"computed": False, "reason": "fewer than 2 identities"}
    features = fid_module.InceptionFeatures(weights, device=str(session.device))
    real = features([identity.reference for identity in identities])
    for condition, entry in summary.items():
        generated = features(store.load_image(i) for i in items if i.condition == condition)
        entry["fid"] = fid_module.fid(generated, real) if len(generated) >= 2 else None
    return {"computed": True, "weights": str(weights), "real_images": len(identities),
            "real_set": "the identity photos' aligned crops"}
