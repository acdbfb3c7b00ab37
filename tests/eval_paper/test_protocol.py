"""The paper's image protocol (``python -m eval.paper``) on tiny random weights and real photos.

The tiny model renders 32x32 noise-like faces, in which the detector finds no face; most tests therefore score with
``undetected="template"`` (the identity photo's keypoints in its aligned crop), and one test checks the counting
of images without a face under the default ``"skip"``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from eval.paper.protocol import PaperOptions, run_protocol
from retarget.pipeline import ExpressionPipeline

from .conftest import MOTION_VALID, job_options

IDENTITIES = ["astronaut", "hanks"]
EXPRESSIONS = ["a", "b", "motion@00000", "motion@00003"]
CONDITIONS = ["id", "reference"]
GRID = len(IDENTITIES) * len(EXPRESSIONS) * len(CONDITIONS)


def run(out, inputs, session, **overrides):
    settings = {"job": session.options, "identities": inputs["identities"], "expressions": inputs["expressions"],
                "out": out, "motion_frames": 2, "undetected": "template", "fid": False}
    settings.update(overrides)
    return run_protocol(PaperOptions(**settings), session=session)


class Calls:
    """Counts the rows of every pipeline call; raises after ``fail_after`` calls when set."""

    def __init__(self, monkeypatch, fail_after=None):
        self.rows: list[int] = []
        self.fail_after = fail_after
        original = ExpressionPipeline.__call__

        def counting(pipe, id_embeds, expressions, *args, **kwargs):
            if self.fail_after is not None and len(self.rows) >= self.fail_after:
                raise RuntimeError("interrupted")
            self.rows.append(len(expressions))
            return original(pipe, id_embeds, expressions, *args, **kwargs)

        monkeypatch.setattr(ExpressionPipeline, "__call__", counting)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, paper_inputs, paper_session):
    """One uninterrupted run of the whole grid: (out folder, results, rows of each pipeline call)."""
    out = tmp_path_factory.mktemp("paper-full") / "out"
    monkeypatch = pytest.MonkeyPatch()
    calls = Calls(monkeypatch)
    try:
        results = run(out, paper_inputs, paper_session)
    finally:
        monkeypatch.undo()
    return out, results, calls.rows


def copy_run(full_run, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(full_run[0], target)
    return target


def test_grid_files_and_skipped_photo(full_run):
    out, results, rows = full_run
    assert results["inputs"]["identities"] == 2 and results["inputs"]["expressions"] == 4
    assert [s["file"] for s in results["inputs"]["skipped"]["identities"]] == ["blank.png"]
    assert "no face" in results["inputs"]["skipped"]["identities"][0]["reason"]
    for condition in CONDITIONS:
        names = sorted(p.name for p in (out / "images" / condition).iterdir())
        assert names == sorted(f"{i}__{e}.png" for i in IDENTITIES for e in EXPRESSIONS)
        for name in names:
            assert np.asarray(Image.open(out / "images" / condition / name)).shape == (32, 32, 3)
    assert rows == [3, 3, 2] * 2  # 8 images per condition in batches of 3 (crossing identities)
    csv_rows = read_csv(out / "per_image.csv")
    assert len(csv_rows) == GRID == results["run"]["rendered"]
    assert {(r["condition"], r["identity"], r["expression"]) for r in csv_rows} == {
        (c, i, e) for c in CONDITIONS for i in IDENTITIES for e in EXPRESSIONS}
    assert not list(out.rglob("*.partial-*"))


def _mean(rows, column):
    values = [float(r[column]) for r in rows if r[column] != ""]
    return sum(values) / len(values)


def test_table_equals_recomputation_from_csv(full_run):
    out, results, _ = full_run
    csv_rows = read_csv(out / "per_image.csv")
    judges = results["judges"]
    assert judges[0] == "arcface"
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| Condition | Images | ID sim. (ArcFace) ↑")
    for condition, line in zip(CONDITIONS, table[2:]):
        rows = [r for r in csv_rows if r["condition"] == condition]
        summary = results["conditions"][condition]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == str(len(rows)) == str(summary["images"])
        for k, judge in enumerate(judges):
            assert summary["id_similarity"][judge] == pytest.approx(_mean(rows, f"id_{judge}"), rel=1e-9)
            assert cells[2 + k] == f"{_mean(rows, f'id_{judge}'):.4f}"
        assert summary["exp"]["exp_mse"] == pytest.approx(_mean(rows, "exp_mse"), rel=1e-9)
        assert cells[2 + len(judges)] == f"{_mean(rows, 'exp_mse'):.4f}"
        for part in ("expression", "eyelid", "jaw"):
            assert summary["exp"][part] == pytest.approx(_mean(rows, f"exp_{part}"), rel=1e-9)
        found = sum(int(r["face_found"]) for r in rows)
        assert cells[-1] == f"{found}/{len(rows)}" and summary["faces_found"] == found


def test_scores_equal_independent_recomputation(full_run, paper_inputs, paper_session):
    """One image's ArcFace similarity and Exp-MSE, recomputed from the saved PNG and the inputs."""
    from retarget.faces.image_io import load_image

    out, _, _ = full_run
    faces = paper_session.faces
    photo = load_image(paper_inputs["identities"] / "hanks.png")
    face = faces.largest_face(photo)
    anchor = faces.identity.embed(photo, face.keypoints)
    _, transform = faces.align_ffhq(photo, face.keypoints, 32)
    keypoints = transform.to_crop(face.keypoints).astype(np.float32)
    rows = {(r["condition"], r["identity"], r["expression"]): r for r in read_csv(out / "per_image.csv")}
    for expression, target in [("motion@00003", paper_inputs["motion_values"][3])]:
        for condition in CONDITIONS:
            image = load_image(out / "images" / condition / f"hanks__{expression}.png")
            row = rows[(condition, "hanks", expression)]
            assert float(row["id_arcface"]) == pytest.approx(float(anchor @ faces.identity.embed(image, keypoints)),
                                                             abs=1e-5)
            achieved = faces.expressions.extract([image], keypoints[None])[0]
            assert float(row["exp_mse"]) == pytest.approx(float(np.mean((achieved - target) ** 2)), rel=1e-5)
    # the image expressions' targets are SMIRK's values of the expression photos
    expression_photo = load_image(paper_inputs["expressions"] / "b.png")
    target = faces.expressions.extract([expression_photo], faces.largest_face(expression_photo).keypoints[None])[0]
    image = load_image(out / "images" / "id" / "hanks__b.png")
    achieved = faces.expressions.extract([image], keypoints[None])[0]
    assert float(rows[("id", "hanks", "b")]["exp_mse"]) == pytest.approx(float(np.mean((achieved - target) ** 2)),
                                                                         rel=1e-5)


def test_conditions_differ_and_equal_a_single_render(full_run, paper_inputs, paper_session):
    """Reference on vs off changes the image; each image equals rendering that cell alone with its noise."""
    from retarget.faces.image_io import load_image
    from retarget.pipeline import clip_noise

    out, _, _ = full_run
    faces, pipe = paper_session.faces, paper_session.pipeline
    photo = load_image(paper_inputs["identities"] / "astronaut.png")
    face = faces.largest_face(photo)
    embedding = faces.identity.embed(photo, face.keypoints)
    reference, _ = faces.align_ffhq(photo, face.keypoints, pipe.image_size)
    target = paper_inputs["motion_values"][0]
    noise_index = int(hashlib.sha256(b"astronaut\0motion@00000").hexdigest()[:8], 16)
    latents = clip_noise(0, [noise_index], pipe.latent_shape, per_frame=True)
    saved = {c: load_image(out / "images" / c / "astronaut__motion@00000.png").astype(int) for c in CONDITIONS}
    assert (saved["id"] != saved["reference"]).mean() > 0.05  # (the tiny model's reference effect is small)
    alone = {}
    for condition, ref in (("id", None), ("reference", reference)):
        alone[condition] = pipe(embedding, target[None], reference_image=ref, reference_scale=0.8,
                                expression_scale=1.0, num_inference_steps=2, guidance_scale=1.0, latents=latents,
                                output_type="np").images[0] * 255
        assert np.abs(np.clip(np.rint(alone[condition]), 0, 255) - saved[condition]).max() <= 1
    assert np.abs(alone["id"] - alone["reference"]).mean() > 0.05


def test_resume_renders_each_image_once_and_equals_uninterrupted(full_run, paper_inputs, paper_session, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "out"
    calls = Calls(monkeypatch, fail_after=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(out, paper_inputs, paper_session)
    assert sorted(p.name for p in (out / "images" / "id").iterdir()) == sorted(
        ["astronaut__a.png", "astronaut__b.png", "astronaut__motion@00000.png", "astronaut__motion@00003.png",
         "hanks__a.png", "hanks__b.png"])
    assert not (out / "per_image.csv").exists() and not list(out.rglob("*.partial-*"))
    first = list(calls.rows)
    calls.rows.clear()
    calls.fail_after = None
    results = run(out, paper_inputs, paper_session)
    assert first == [3, 3] and calls.rows == [2, 3, 3, 2]
    assert sum(first) + sum(calls.rows) == GRID  # no image rendered twice
    assert results["run"]["reused"] == 6 and results["run"]["rendered"] == 10
    assert (out / "per_image.csv").read_text() == (full_run[0] / "per_image.csv").read_text()
    assert (out / "table.md").read_text() == (full_run[0] / "table.md").read_text()
    for path in (full_run[0] / "images").rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(out / path.relative_to(full_run[0]))))
    calls.rows.clear()
    again = run(out, paper_inputs, paper_session)  # a finished run renders nothing
    assert calls.rows == [] and again["run"]["reused"] == GRID


def test_limit_takes_the_first_identities(full_run, paper_inputs, paper_session, tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    results = run(tmp_path / "fresh", paper_inputs, paper_session, limit=1)
    assert calls.rows == [3, 1, 3, 1]
    rows = read_csv(tmp_path / "fresh" / "per_image.csv")
    assert {r["identity"] for r in rows} == {"astronaut"} and len(rows) == 8
    assert results["inputs"]["identities"] == 1
    # the first identities of a bigger run are reused, not rendered again
    calls.rows.clear()
    subset = run(copy_run(full_run, tmp_path), paper_inputs, paper_session, limit=1)
    assert calls.rows == [] and subset["run"]["reused"] == 8


def test_skip_counts_images_without_a_face(full_run, paper_inputs, paper_session, tmp_path, monkeypatch):
    """Default scoring: images where the detector finds no face are counted and left out of the means (the tiny
    model's 32x32 images have none); saved images are rescored, not rendered again."""
    calls = Calls(monkeypatch)
    out = copy_run(full_run, tmp_path)
    results = run(out, paper_inputs, paper_session, undetected="skip")
    assert calls.rows == [] and results["run"]["rescored"] == GRID
    rows = read_csv(out / "per_image.csv")
    for condition in CONDITIONS:
        summary = results["conditions"][condition]
        found = sum(int(r["face_found"]) for r in rows if r["condition"] == condition)
        assert summary["faces_found"] == found == summary["scored"]
    assert all((r["id_arcface"] == "") == (r["face_found"] == "0") for r in rows)
    if not any(int(r["face_found"]) for r in rows):
        assert "| n/a |" in (out / "table.md").read_text()


def test_changed_model_file_starts_over(cli_models, paper_inputs, tmp_path, monkeypatch):
    import torch

    from retarget.jobs.session import RenderSession

    models = tmp_path / "models"
    shutil.copytree(cli_models[0], models)
    out = tmp_path / "out"

    def session():
        return RenderSession(job_options(models, cli_models[1])).load()

    first = run(out, paper_inputs, session(), limit=1, reference="off")
    assert first["run"]["rendered"] == 4 and not first["run"]["started_over"]
    before = np.asarray(Image.open(out / "images" / "id" / "astronaut__a.png"))
    adapter = models / "exp_adapter" / "exp_adapter.bin"
    state = torch.load(adapter, weights_only=True)
    state["image_proj"]["proj.0.bias"] = state["image_proj"]["proj.0.bias"] + 1.0
    torch.save(state, adapter)
    calls = Calls(monkeypatch)
    second = run(out, paper_inputs, session(), limit=1, reference="off")
    assert second["run"]["started_over"] and second["run"]["rendered"] == 4 and sum(calls.rows) == 4
    assert not np.array_equal(before, np.asarray(Image.open(out / "images" / "id" / "astronaut__a.png")))


def test_motion_file_expressions_are_its_valid_frames(full_run, paper_inputs):
    """motion.npz has valid frames 0, 1 and 3; two of them evenly spread are frames 0 and 3."""
    out = full_run[0]
    valid = [k for k, ok in enumerate(MOTION_VALID) if ok]
    assert valid == [0, 1, 3]
    for frame in (0, 3):
        record = json.loads((out / "records" / "id" / f"astronaut__motion@{frame:05d}.json").read_text())
        assert np.allclose(record["scores"]["target"], paper_inputs["motion_values"][frame], atol=1e-6)
    assert sorted(p.name for p in (out / "records" / "id").glob("astronaut__motion@*")) == [
        "astronaut__motion@00000.json", "astronaut__motion@00003.json"]


@pytest.mark.parametrize("case", ["limit0", "empty", "no_face"])
def test_bad_input_is_one_line_error(case, cli_models, paper_inputs, tmp_path, capsys):
    from eval.paper.cli import main

    identities = paper_inputs["identities"]
    if case == "empty":
        identities = tmp_path / "empty"
        identities.mkdir()
    if case == "no_face":
        identities = tmp_path / "blank"
        identities.mkdir()
        shutil.copy(paper_inputs["identities"] / "blank.png", identities)
    models, base = cli_models
    argv = ["--identities", str(identities), "--expressions", str(paper_inputs["expressions"]), "--models",
            str(models), "--base-model", str(base), "-o", str(tmp_path / "out"), "--device", "cpu", "--steps", "1",
            "--no-progress"] + (["--limit", "0"] if case == "limit0" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"limit0": "error: --limit must be >= 1, got 0", "empty": "no identity image files",
                "no_face": "no identity photo with a face (1 skipped)"}[case]
    assert err[-1].startswith("error: ") and expected in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "results.json").exists()


def test_command_line_writes_the_table(cli_models, paper_inputs, tmp_path, capsys):
    from eval.paper.cli import main

    models, base = cli_models
    out = tmp_path / "out"
    argv = ["--identities", str(paper_inputs["identities"]), "--expressions", str(paper_inputs["expressions"]),
            "--models", str(models), "--base-model", str(base), "-o", str(out), "--device", "cpu", "--steps", "1",
            "--guidance", "1", "--limit", "1", "--no-reference", "--motion-frames", "1", "--no-progress",
            "--undetected", "template"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == (out / "table.md").read_text()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| ID-conditioned | 3 |")
    assert "FID" in captured.err or "FID" in captured.out


def test_fid_with_local_inception_weights(full_run, paper_inputs, paper_session, tmp_path, monkeypatch,
                                          random_inception):
    from eval.paper.fid import InceptionFeatures, fid
    from retarget.faces.image_io import load_image

    calls = Calls(monkeypatch)
    out = copy_run(full_run, tmp_path)
    results = run(out, paper_inputs, paper_session, fid=True, inception=random_inception)
    assert calls.rows == [] and results["fid"]["computed"] and results["fid"]["real_images"] == 2
    features = InceptionFeatures(random_inception)
    faces = paper_session.faces
    references = []
    for name in IDENTITIES:
        photo = load_image(paper_inputs["identities"] / f"{name}.png")
        references.append(faces.align_ffhq(photo, faces.largest_face(photo).keypoints, 32)[0])
    real = features(references)
    table = (out / "table.md").read_text().splitlines()
    assert "FID ↓" in table[0]
    column = [c.strip() for c in table[0].strip("|").split("|")].index("FID ↓")
    for condition, line in zip(CONDITIONS, table[2:]):
        generated = features([load_image(out / "images" / condition / f"{i}__{e}.png")
                              for i in IDENTITIES for e in EXPRESSIONS])
        expected = fid(generated, real)
        assert results["conditions"][condition]["fid"] == pytest.approx(expected, rel=1e-4)
        assert [c.strip() for c in line.strip("|").split("|")][column] == f"{expected:.3f}"


def test_a_folder_that_is_not_a_run_folder_is_left_alone(paper_inputs, paper_session, tmp_path):
    from retarget.errors import InputError

    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(InputError, match="not a run folder"):
        run(out, paper_inputs, paper_session, limit=1)
    assert (out / "images" / "holiday.jpg").read_bytes() == b"not ours"
    with pytest.raises(InputError, match="not a run folder"):  # the options refuse it, before any model or input
        PaperOptions(job=paper_session.options, identities=paper_inputs["identities"],
                     expressions=paper_inputs["expressions"], out=out)
    videos = tmp_path / "videos"  # any other folder with files in it: nothing written there either
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"mine")
    with pytest.raises(InputError, match="is not empty and has no run-key.json"):
        run(videos, paper_inputs, paper_session, limit=1)
    assert [p.name for p in videos.iterdir()] == ["a.mp4"]
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    run(tmp_path / "empty", paper_inputs, paper_session, limit=1)
    assert (tmp_path / "empty" / "run-key.json").is_file()


def test_cells_that_would_share_a_file_name_are_an_error():
    from eval.paper.inputs import Expression, Identity
    from eval.paper.store import grid
    from retarget.errors import InputError

    def identity(name):
        return Identity(name, None, {}, None, None, {}, None, None)

    def expression(name):
        return Expression(name, np.zeros(55, np.float32), None, {})

    assert len(grid(CONDITIONS, [identity("a"), identity("b")], [expression("c")])) == 4
    with pytest.raises(InputError, match="a__b__c.png"):
        grid(CONDITIONS, [identity("a__b"), identity("a")], [expression("c"), expression("b__c")])


def test_a_changed_identity_photo_renders_only_its_images(full_run, paper_inputs, paper_session, tmp_path,
                                                          monkeypatch):
    inputs = dict(paper_inputs, identities=tmp_path / "identities")
    shutil.copytree(paper_inputs["identities"], inputs["identities"])
    photo = np.asarray(Image.open(inputs["identities"] / "hanks.png").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(inputs["identities"] / "hanks.png")  # mirrored
    calls = Calls(monkeypatch)
    out = copy_run(full_run, tmp_path)
    results = run(out, inputs, paper_session)
    assert sum(calls.rows) == 8 and results["run"]["reused"] == 8
    old = {(r["condition"], r["identity"], r["expression"]): r for r in read_csv(full_run[0] / "per_image.csv")}
    for row in read_csv(out / "per_image.csv"):
        if row["identity"] == "astronaut":
            assert row == old[(row["condition"], row["identity"], row["expression"])]
