"""Manifest reading/writing, reference pairs and the per-process batch order."""

import json

import numpy as np
import pytest
import torch

from retarget.errors import InputError
from train.data import FaceSamples, ReferencePairs, clip_partners, epoch_batches
from train.manifest import MANIFEST_FILE, SampleRecord, open_for_append, read_manifest

from .conftest import write_data_folder


def test_samples_have_the_documented_shapes_and_ranges(tmp_path, caplog):
    data = write_data_folder(tmp_path, images=1, clips=1, frames=3)
    with caplog.at_level("WARNING", logger="train"):
        samples = FaceSamples(data)
    assert not caplog.records
    assert len(samples) == 4
    item = samples[3]
    assert item["pixels"].shape == (3, 32, 32) and item["pixels"].dtype == torch.float32
    assert -1 <= float(item["pixels"].min()) and float(item["pixels"].max()) <= 1
    assert item["identity"].shape == (512,) and item["expression"].shape == (55,)
    with caplog.at_level("WARNING", logger="train"):
        resized = FaceSamples(data, resolution=16)[0]["pixels"]
        FaceSamples(data, resolution=64)
    assert resized.shape == (3, 16, 16)
    assert caplog.messages == [
        f"{data} holds 32 px crops; they are resized to 16 px as they are read (annotating at that size saves the "
        "work)",
        f"{data} holds 32 px crops; they are resized to 64 px as they are read (detail is lost: annotate at "
        "--resolution 64 for full detail)"]


def test_unfinished_inputs_are_dropped_on_reopen(tmp_path):
    data = write_data_folder(tmp_path, images=1, clips=0)
    # an input whose lines were written but whose inputs.jsonl line was not (interrupted run)
    record = SampleRecord(id="late/0", input="late.png", kind="image", arrays="late", row=0)
    with open(data / MANIFEST_FILE, "a") as f:
        f.write(record.to_json() + "\n")
    assert [r.id for r in read_manifest(data)] == ["image0/0"]
    writer = open_for_append(data, 32)
    assert writer.done("image0.png") and not writer.done("late.png")
    lines = (data / MANIFEST_FILE).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["image0/0"]
    with pytest.raises(InputError, match="32px crops"):
        open_for_append(data, 64)


def test_reopening_with_other_sampling_settings_is_refused(tmp_path):
    """Samples taken at another --fps (or --faces, --min-face) would mix into one folder: refused, with the
    recorded value; the same settings reopen it, and a folder of an earlier version (no record) is not checked."""
    sampling = {"fps": 10.0, "faces": "largest", "min_face": 0.0}
    open_for_append(tmp_path / "data", 32, sampling)
    assert json.loads((tmp_path / "data" / "annotation.json").read_text())["sampling"] == sampling
    open_for_append(tmp_path / "data", 32, dict(sampling))
    with pytest.raises(InputError, match=r"annotated with --fps 10.0, not --fps 5.0; annotate it again with --fps 10.0 or"):
        open_for_append(tmp_path / "data", 32, {**sampling, "fps": 5.0})
    with pytest.raises(InputError, match=r"with --fps 10.0, not no --fps; annotate it again with --fps 10.0 or"):
        open_for_append(tmp_path / "data", 32, {**sampling, "fps": None})
    open_for_append(tmp_path / "nofps", 32, {**sampling, "fps": None})
    with pytest.raises(InputError, match=r"annotated with no --fps, not --fps 5.0; annotate it again with no --fps"):
        open_for_append(tmp_path / "nofps", 32, {**sampling, "fps": 5.0})
    with pytest.raises(InputError, match="annotated with --faces largest, not --faces all"):
        open_for_append(tmp_path / "data", 32, {**sampling, "faces": "all"})
    open_for_append(tmp_path / "old", 32)  # as earlier versions wrote it: no sampling record
    open_for_append(tmp_path / "old", 32, {**sampling, "fps": 5.0})


def test_not_a_data_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not an annotated data folder"):
        FaceSamples(tmp_path)


def _record(clip, frame, time):
    return SampleRecord(id=f"{clip}/{frame}", input=f"{clip}.mp4", kind="video", arrays=clip, row=frame,
                        clip=clip, frame=frame, time=time)


def test_partners_are_other_frames_of_the_clip_within_the_window():
    records = [_record("a", f, f * 0.5) for f in range(6)] + [_record("b", 0, 0.0)]
    records.append(SampleRecord(id="img/0", input="img.png", kind="image", arrays="img", row=0))
    partners = clip_partners(records, window=1.0)
    assert partners[0] == [1, 2]          # 0.5 s and 1.0 s away; 1.5 s is outside
    assert partners[3] == [1, 2, 4, 5]
    assert partners[6] == [] and partners[7] == []  # alone in its clip; a still image


def test_pairs_draw_a_reproducible_partner_per_epoch(tmp_path):
    data = write_data_folder(tmp_path, images=1, clips=2, frames=5, fps=2.0)
    pairs = ReferencePairs(FaceSamples(data), window=1.0, seed=3)
    assert len(pairs) == 10  # every video frame has a partner; the image has none
    records = pairs.samples.records
    for index in range(len(pairs)):
        target, reference = records[pairs.targets[index]], records[pairs.reference_of(index)]
        assert reference.clip == target.clip and reference.frame != target.frame
        assert abs(reference.time - target.time) <= 1.0
    first = [pairs.reference_of(i) for i in range(len(pairs))]
    assert first == [ReferencePairs(FaceSamples(data), 1.0, seed=3).reference_of(i) for i in range(len(pairs))]
    pairs.set_epoch(1)
    assert [pairs.reference_of(i) for i in range(len(pairs))] != first
    item = pairs[0]
    samples = pairs.samples
    assert torch.equal(item["identity"], samples.identity(pairs.reference_of(0)))
    assert torch.equal(item["expression"], samples.expression(pairs.targets[0]))
    assert torch.equal(item["reference_pixels"], samples.pixels(pairs.reference_of(0)))


def test_pairs_need_video_clips(tmp_path):
    data = write_data_folder(tmp_path, images=2, clips=0)
    with pytest.raises(InputError, match="no two frames of one clip"):
        ReferencePairs(FaceSamples(data), window=2.0)


def test_epoch_batches_shard_without_overlap():
    shards = [epoch_batches(23, 3, seed=1, epoch=0, num_processes=2, process_index=p) for p in range(2)]
    assert [len(s) for s in shards] == [3, 3]  # 23 // 6 steps; the tail is dropped
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == 18
    assert epoch_batches(23, 3, 1, 0, 2, 0) == shards[0]
    assert epoch_batches(23, 3, 1, 1, 2, 0) != shards[0]
    with pytest.raises(InputError, match="fewer than one step"):
        epoch_batches(5, 3, 0, 0, 2, 0)
    assert np.all(np.array(flat) < 23)
