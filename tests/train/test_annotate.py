"""Annotating real photos and a generated clip with random-weight ArcFace/SMIRK and the offline detector."""

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
from PIL import Image

from train import annotate
from train.data import FaceSamples, ReferencePairs
from train.manifest import read_manifest

RESOLUTION = 64
CLIP_FRAMES, CLIP_FPS = 6, 5


def _group_photo() -> Path:
    return Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images" / "t1.jpg"


def _write_clip(path: Path) -> None:
    """A 6-frame 5 fps H.264 clip of the astronaut's face drifting sideways."""
    face = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 256)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(CLIP_FPS))
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for i in range(CLIP_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.roll(face, 3 * i, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    from retarget.testing.face_models import write_random_face_models

    return write_random_face_models(tmp_path_factory.mktemp("face_models"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    (folder / "group").mkdir()
    (folder / "group" / "t1.jpg").write_bytes(_group_photo().read_bytes())
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    _write_clip(folder / "clip.mp4")
    (folder / "notes.txt").write_text("ignored")
    return folder


@pytest.fixture(scope="module")
def annotated(inputs, face_models, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "DATA"
    argv = [str(inputs), "-o", str(data), "--models", str(face_models), "--resolution", str(RESOLUTION),
            "--device", "cpu"]
    assert annotate.main(argv) == 0
    return data, argv


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_has_one_line_per_sample_with_the_documented_fields(annotated):
    data, _ = annotated
    assert json.loads((data / "annotation.json").read_text()) == {
        "format": 1, "resolution": RESOLUTION, "sampling": {"fps": None, "faces": "largest", "min_face": 0.0}}
    status = {entry["input"]: (entry["status"], entry["samples"]) for entry in _lines(data / "inputs.jsonl")}
    assert status == {"astronaut.png": ("ok", 1), "blank.png": ("no-face", 0), "broken.jpg": ("unreadable", 0),
                      "clip.mp4": ("ok", CLIP_FRAMES), "group/t1.jpg": ("ok", 1)}
    lines = _lines(data / "manifest.jsonl")
    assert len(lines) == 2 + CLIP_FRAMES
    fields = {"id", "input", "kind", "arrays", "row", "clip", "frame", "time", "box", "score"}
    assert all(set(line) == fields for line in lines)
    video = [line for line in lines if line["kind"] == "video"]
    assert [line["frame"] for line in video] == list(range(CLIP_FRAMES))
    assert np.allclose([line["time"] for line in video], np.arange(CLIP_FRAMES) / CLIP_FPS)
    assert len({line["clip"] for line in video}) == 1 and video[0]["clip"] == video[0]["arrays"]
    image = next(line for line in lines if line["input"] == "astronaut.png")
    assert image["clip"] is None and image["time"] is None and image["frame"] is None
    x0, y0, x1, y1 = image["box"]
    assert 100 < x0 < x1 < 300 and 0 < y0 < y1 < 250  # the astronaut's face in the 512x512 photo


def test_arrays_match_the_manifest(annotated):
    data, _ = annotated
    for record in read_manifest(data):
        folder = data / "arrays" / record.arrays
        identity, expression = np.load(folder / "identity.npy"), np.load(folder / "expression.npy")
        crops = np.load(folder / "crops.npy", mmap_mode="r")
        assert identity.dtype == np.float32 and identity.shape[1:] == (512,)
        assert expression.dtype == np.float32 and expression.shape[1:] == (55,)
        assert crops.dtype == np.uint8 and crops.shape[1:] == (RESOLUTION, RESOLUTION, 3)
        assert len(identity) == len(expression) == len(crops) > record.row
        assert abs(np.linalg.norm(identity[record.row]) - 1) < 1e-4
        assert crops[record.row].std() > 10  # a face crop, not an empty canvas
    assert not list((data / "arrays").glob("*.partial"))


def test_rerun_skips_done_inputs_and_new_inputs_are_added(annotated, inputs, tmp_path):
    data, argv = annotated
    before = (data / "manifest.jsonl").read_text()
    assert annotate.annotate(annotate.build_parser().parse_args(argv)) == {"inputs": 5, "skipped": 5, "samples": 0}
    assert (data / "manifest.jsonl").read_text() == before


def test_the_training_datasets_read_the_annotation(annotated):
    data, _ = annotated
    samples = FaceSamples(data)
    assert len(samples) == 2 + CLIP_FRAMES and samples[0]["pixels"].shape == (3, RESOLUTION, RESOLUTION)
    pairs = ReferencePairs(samples, window=0.5)
    assert len(pairs) == CLIP_FRAMES  # every frame has a partner 0.2-0.4 s away; images have none
    records = samples.records
    gaps = [abs(records[pairs.targets[i]].time - records[pairs.reference_of(i)].time) for i in range(len(pairs))]
    assert all(0 < gap <= 0.5 for gap in gaps)


def test_fps_samples_video_frames(inputs, face_models, tmp_path):
    clip_only = tmp_path / "in"
    clip_only.mkdir()
    (clip_only / "clip.mp4").write_bytes((inputs / "clip.mp4").read_bytes())
    data = tmp_path / "data"
    assert annotate.main([str(clip_only), "-o", str(data), "--models", str(face_models), "--resolution", "32",
                          "--fps", "2", "--device", "cpu"]) == 0
    # frames at 0, 0.2, ..., 1.0 s: the first at or after each 0.5 s step
    assert [r.time for r in read_manifest(data)] == [0.0, 0.6, 1.0]


def test_missing_face_models_is_one_line(inputs, tmp_path, capsys):
    assert annotate.main([str(inputs), "-o", str(tmp_path / "d"), "--models", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arcface.onnx" in err[0]


def test_all_faces_of_a_group_photo(face_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "t1.jpg").write_bytes(_group_photo().read_bytes())
    data = tmp_path / "data"
    assert annotate.main([str(folder), "-o", str(data), "--models", str(face_models), "--resolution", "32",
                          "--faces", "all", "--device", "cpu"]) == 0
    records = read_manifest(data)
    assert len(records) == 6 and [r.row for r in records] == list(range(6))
    areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in records]
    assert areas == sorted(areas, reverse=True)  # largest first, as detected
    identity = np.load(data / "arrays" / records[0].arrays / "identity.npy")
    assert identity.shape == (6, 512) and len({tuple(row.round(4)) for row in identity}) == 6
