"""Provenance: the frame watermark (exact lattice, invisibility, x264 CRF 18/23 survival, no false find) and the
container metadata (round trip in MP4, MOV and Matroska through ChunkedRender)."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import cv2
import numpy as np
import pytest
from PIL import Image

from retarget.provenance import metadata, watermark
from retarget.testing.media import face_photo, moving_face_frames
from retarget.video.encoding import EncoderSettings
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender
from retarget.video.writer import VideoWriter


def face_frame(side: int = 512) -> np.ndarray:
    return np.asarray(Image.fromarray(face_photo()).resize((side, side), Image.BICUBIC))


def reference_coefficients(frame: np.ndarray) -> np.ndarray:
    """The carrying coefficients computed independently: float64 luma, explicit 2x2 Haar LL, cv2.dct per block.
    ``[rows * cols, 2]`` in block order."""
    side = 2 * watermark.BLOCK
    rows, cols = frame.shape[0] // side, frame.shape[1] // side
    rgb = frame[: rows * side, : cols * side].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    ll = (luma[0::2, 0::2] + luma[0::2, 1::2] + luma[1::2, 0::2] + luma[1::2, 1::2]) / 2.0
    out = []
    for r in range(rows):
        for c in range(cols):
            block = cv2.dct(ll[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8])
            out.append([block[0, 1], block[1, 0]])
    return np.array(out)


def lattice_distance(coefficients: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Distance of each coefficient from its bit's lattice (multiples of STEP for 0, odd multiples of STEP/2 for 1)."""
    shifted = coefficients - bits[:, None] * watermark.STEP / 2
    return np.abs(shifted - np.round(shifted / watermark.STEP) * watermark.STEP)


def test_marked_coefficients_sit_on_the_payload_lattice():
    frame = face_frame()
    marked = watermark.embed(frame)
    bits = watermark.PAYLOAD[np.arange((512 // 16) ** 2) % 48]
    after = lattice_distance(reference_coefficients(marked), bits)
    # Rounding the change to whole grey levels leaves coefficients a little off the lattice, clipping at 0 and 255
    # (the white suit) more; a read tolerates STEP / 4 = 9.
    assert np.median(after) < 1.0 and np.percentile(after, 99) < 5.0
    assert np.mean(after < watermark.STEP / 4) > 0.995
    before = lattice_distance(reference_coefficients(frame), bits)
    assert before.mean() > 6.0  # unmarked: spread over [0, STEP / 2] (mean STEP / 4 = 9 for uniform remainders)
    assert watermark.bit_accuracy(watermark.bit_scores(marked)) == 1.0


def test_mark_is_invisible_and_cheap_to_apply():
    frame = face_frame()
    marked = watermark.embed(frame)
    difference = marked.astype(int) - frame
    assert np.abs(difference).max() <= 4  # grey levels
    assert cv2.PSNR(frame, marked) > 45.0
    # only luma changes: R, G and B move together (except where a channel saturates)
    free = ((marked > 0) & (marked < 255)).all(axis=-1)
    assert np.array_equal(difference[free][:, 0], difference[free][:, 1])
    assert np.array_equal(difference[free][:, 0], difference[free][:, 2])
    assert np.array_equal(watermark.embed_frames(frame[None])[0], marked)


def test_too_small_frames_are_left_alone_and_reported():
    small = np.full((32, 32, 3), 100, np.uint8)
    assert not watermark.can_carry(32, 32)
    assert np.array_equal(watermark.embed(small), small)
    result = watermark.detect([small, small])
    assert result["found"] is False and result["frames"] == 0 and "32x32" in result["reason"]
    assert watermark.can_carry(64, 112) and watermark.capacity(64, 112) == 4 * 7 * 2


def test_false_positive_rate_is_the_binomial_tail():
    from scipy.stats import binom

    assert watermark.false_positive_rate() == pytest.approx(binom.sf(watermark.MATCH_THRESHOLD - 1, 48, 0.5))
    assert watermark.false_positive_rate() < 1e-7
    assert int(watermark.PAYLOAD.sum()) == 24  # a constant answer agrees on exactly half the bits


def encode_and_read(path, frames, crf):
    with VideoWriter(path, Fraction(25), settings=EncoderSettings(crf=crf)) as writer:
        writer.write(frames)
    return watermark.detect(frame for frame, _, _ in VideoReader(path).iter_frames())


@pytest.mark.parametrize("crf", [18, 23])
def test_mark_survives_x264(tmp_path, crf):
    frames = moving_face_frames(8, 256, 256)
    marked = encode_and_read(tmp_path / "marked.mp4", watermark.embed_frames(frames), crf)
    assert marked["found"] and marked["frames"] == 8
    assert marked["matching_bits"] >= 46
    assert marked["frame_accuracy"]["mean"] > 0.85
    plain = encode_and_read(tmp_path / "plain.mp4", frames, crf)
    assert not plain["found"] and plain["frames"] == 8
    assert plain["matching_bits"] <= 34  # chance level is 24 of 48


def test_unmarked_clips_read_as_chance():
    rng = np.random.default_rng(3)
    flat = np.full((4, 128, 128, 3), 90, np.uint8)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 1.5)
    for frames in (flat, moving_face_frames(4, 320, 240), np.stack([noise] * 3)):
        result = watermark.detect(frames)
        assert not result["found"]
        assert result["matching_bits"] <= 34
    assert watermark.detect(flat)["matching_bits"] == 24  # flat areas read 0 everywhere


def test_models_fingerprint_follows_sizes_and_adapter_contents_not_times(tmp_path):
    assert metadata.models_fingerprint(tmp_path / "missing") is None
    adapter = tmp_path / "exp_adapter" / "exp_adapter.bin"
    adapter.parent.mkdir()
    adapter.write_bytes(b"1234")
    first = metadata.models_fingerprint(tmp_path)
    assert first == metadata.models_fingerprint(tmp_path) and len(first) == 64
    os.utime(adapter, ns=(1, 2))
    assert metadata.models_fingerprint(tmp_path) == first  # same weights, other time: same fingerprint
    adapter.write_bytes(b"1235")  # same size, other content
    second = metadata.models_fingerprint(tmp_path)
    assert second != first
    onnx = tmp_path / "antelopev2" / "arcface.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"x" * 10)
    assert metadata.models_fingerprint(tmp_path) not in (first, second)


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_metadata_and_mark_round_trip_through_chunked_render(tmp_path, suffix):
    record = metadata.provenance_record("run", {"steps": 25, "seed": 7}, models_dir=tmp_path, watermarked=True)
    out = tmp_path / f"out{suffix}"
    frames = moving_face_frames(6, 192, 128)
    job = ChunkedRender(out, {"test": suffix, "watermark": True}, 6, 4, Fraction(24))
    for span in job.pending_chunks():
        job.save_chunk(span.index, frames[span.start : span.stop], watermark=True)
    job.finalize(progress=False, metadata=metadata.container_tags(record))
    assert metadata.read_provenance(out) == json.loads(json.dumps(record))
    assert record["synthetic"] is True and record["version"] and record["models_fingerprint"]
    found = watermark.detect(frame for frame, _, _ in VideoReader(out).iter_frames())
    assert found["found"] and found["frames"] == 6


def test_metadata_round_trip_in_matroska(tmp_path):
    """Matroska keeps every tag but reads names back upper-cased (COMMENT)."""
    record = metadata.provenance_record("edit", {"seed": 1}, models_dir=None, watermarked=False)
    out = tmp_path / "out.mkv"
    with VideoWriter(out, Fraction(24), metadata=metadata.container_tags(record)) as writer:
        writer.write(moving_face_frames(2, 64, 64))
    assert metadata.read_provenance(out) == record
    assert record["watermark"] is None and record["models_fingerprint"] is None


def test_unmarked_render_has_no_metadata_or_mark(tmp_path):
    out = tmp_path / "plain.mp4"
    frames = moving_face_frames(4, 192, 128)
    job = ChunkedRender(out, {"test": "plain"}, 4, 4, Fraction(24))
    job.save_chunk(0, frames)
    job.finalize(progress=False)
    assert metadata.read_provenance(out) is None
    assert not watermark.detect(frame for frame, _, _ in VideoReader(out).iter_frames())["found"]


def test_parse_record_rejects_other_comments():
    assert metadata.parse_record("made with my phone") is None
    assert metadata.parse_record(json.dumps({"tool": "other", "synthetic": True})) is None
    assert metadata.parse_record(json.dumps({"tool": "retarget", "synthetic": True}))["tool"] == "retarget"


def test_watermark_setting_is_part_of_the_render_key():
    from retarget.jobs.options import JobOptions

    marked, plain = JobOptions(models="m"), JobOptions(models="m", watermark=False)
    assert marked.watermark is True and marked.render_key()["watermark"] is True
    assert plain.render_key()["watermark"] is False
    assert {k: v for k, v in marked.render_key().items() if k != "watermark"} == \
        {k: v for k, v in plain.render_key().items() if k != "watermark"}
