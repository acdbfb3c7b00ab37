"""Scores of generated images: the face found again, its identity and its expression against the targets.

Each generated image (already an aligned face) goes through the same :class:`~retarget.faces.models.FaceModels`
as the inputs: the detector finds its largest face, SMIRK re-extracts the 55 expression values from it, and each
identity judge embeds it. Per image:

* ``face_found``: the detector found a face;
* ``scored``: the image has scores (a face was found, or ``undetected="template"``: the identity photo's
  keypoints in its own aligned crop stand in for the detection, since the output is aligned the same way);
* ``id``: ``{judge name: cosine similarity to that judge's embedding of the identity photo}`` (higher = more
  like the person, in [-1, 1]);
* ``exp``: :func:`retarget.evaluation.metrics.exp_mse` of the re-extracted values against the target
  (``exp_mse`` over all 55 values, and its ``expression``/``eyelid``/``jaw`` parts; lower = closer);
* ``achieved``: the re-extracted 55 values.

Images that are not scored keep ``None`` scores; they are counted, not averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retarget.evaluation.judges import cosine
from retarget.evaluation.metrics import exp_mse
from retarget.faces.models import FaceModels

UNDETECTED = ("skip", "template")
EXP_KEYS = ("exp_mse", "expression", "eyelid", "jaw")


def _keypoints(images: np.ndarray, crop_keypoints: Sequence[np.ndarray], faces: FaceModels, undetected: str):
    """(found bool [n], keypoints [n, 5, 2] with NaN where none is used)."""
    found = np.zeros(len(images), bool)
    keypoints = np.full((len(images), 5, 2), np.nan, np.float32)
    for row, image in enumerate(images):
        detected = faces.detect(image)
        if detected:
            found[row] = True
            keypoints[row] = detected[0].keypoints
        elif undetected == "template":  # the reference crop is made at the output's size: same pixels
            keypoints[row] = crop_keypoints[row]
    return found, keypoints


def score_images(images: np.ndarray, targets: np.ndarray, anchors: Sequence[dict[str, np.ndarray]],
                 crop_keypoints: Sequence[np.ndarray], faces: FaceModels, judges: Sequence,
                 undetected: str = "skip") -> list[dict]:
    """Scores of ``n`` generated images (see the module doc).

    ``images``: RGB uint8 ``[n, S, S, 3]``. ``targets``: float32 ``[n, 55]`` (the values each was rendered with).
    ``anchors``: per image ``{judge name: unit embedding}`` of its identity photo. ``crop_keypoints``: per image
    the identity photo's keypoints in its ``S x S`` aligned crop (used with ``undetected="template"``).
    ``judges``: identity judges (``name``, ``embed_many(images, keypoints)``). Returns one dict per image.
    """
    if undetected not in UNDETECTED:
        raise ValueError(f"undetected must be one of {UNDETECTED}, got {undetected!r}")
    images = np.asarray(images)
    targets = np.asarray(targets, np.float32)
    found, keypoints = _keypoints(images, crop_keypoints, faces, undetected)
    scored = ~np.isnan(keypoints[:, 0, 0])
    rows = np.flatnonzero(scored)
    results = [{"face_found": bool(found[r]), "scored": bool(scored[r]), "keypoints": None, "achieved": None,
                "id": {judge.name: None for judge in judges}, "exp": {k: None for k in EXP_KEYS}}
               for r in range(len(images))]
    if len(rows) == 0:
        return results
    picked = [images[r] for r in rows]
    achieved = faces.expressions.extract(picked, keypoints[rows])
    embedded = {judge.name: np.asarray(judge.embed_many(picked, keypoints[rows])) for judge in judges}
    for k, row in enumerate(rows):
        result = results[row]
        result["keypoints"] = keypoints[row].round(3).tolist()
        result["achieved"] = [float(v) for v in achieved[k]]
        for judge in judges:
            result["id"][judge.name] = float(cosine(embedded[judge.name][k], anchors[row][judge.name]))
        metrics = exp_mse(achieved[k:k + 1], targets[row:row + 1], np.ones(1, bool))
        result["exp"] = {key: float(metrics[key]) for key in EXP_KEYS}
    return results
