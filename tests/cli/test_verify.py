"""``retarget verify`` on real renders: metadata and watermark found in run/edit outputs, nothing in camera clips,
--no-watermark keeps the metadata only; errors are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from retarget.cli import main
from tests.cli.conftest import FRAMES


@pytest.fixture(scope="module")
def large_models(cli_models, tmp_path_factory):
    """The tiny weights with a 64x64 latent (128x128 output frames), large enough to carry the watermark."""
    models, base = cli_models
    root = tmp_path_factory.mktemp("large-weights")
    shutil.copytree(models, root / "models")
    config = root / "models" / "arc2face" / "config.json"
    data = json.loads(config.read_text())
    data["sample_size"] = 64
    config.write_text(json.dumps(data))
    return root / "models", base


def verify_json(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["verify", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def swap_models(args, models):
    out = list(args)
    out[out.index("--models") + 1] = str(models)
    return out


def test_run_output_carries_both_marks(media, fast_args, large_models, tmp_path, capsys):
    out = tmp_path / "run.mp4"
    args = swap_models(fast_args, large_models[0])
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--end", "0.2",
                 *args]) == 0
    report = verify_json(out, capsys)
    record = report["metadata"]["record"]
    assert report["metadata"]["found"] and record["synthetic"] is True and record["command"] == "run"
    assert record["settings"]["steps"] == 2 and record["settings"]["watermark"] is True
    assert len(record["models_fingerprint"]) == 64 and record["watermark"]["payload"] == b"RTsyn*".hex()
    assert str(tmp_path) not in json.dumps(record) and "clip.mp4" not in json.dumps(record)  # no local paths
    mark = report["watermark"]
    assert mark["found"] and mark["frames"] == 6 and mark["matching_bits"] >= 46  # frames 0-5 (0.2 s)

    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "synthetic video made by retarget" in text and "watermark: found" in text and "6 frame(s)" in text


def test_no_watermark_keeps_the_metadata_only(media, fast_args, tmp_path, capsys):
    out = tmp_path / "plain.mp4"
    assert main(["edit", str(media["clip"]), "--expression", str(media["photo"]), "-o", str(out), "--no-watermark",
                 *fast_args]) == 0
    report = verify_json(out, capsys)
    assert report["metadata"]["found"] and report["metadata"]["record"]["watermark"] is None
    assert not report["watermark"]["found"] and report["watermark"]["frames"] == FRAMES
    assert report["watermark"]["matching_bits"] <= 34


def test_edit_side_by_side_is_marked_over_the_whole_frame(media, fast_args, tmp_path, capsys):
    out = tmp_path / "edit.mp4"
    assert main(["edit", str(media["clip"]), "--expression", str(media["photo"]), "-o", str(out), "--side-by-side",
                 *fast_args]) == 0
    report = verify_json(out, capsys)
    record = report["metadata"]["record"]
    assert record["command"] == "edit" and record["settings"]["edited_frames"] == FRAMES - 2  # two faceless frames
    assert record["settings"]["side_by_side"] is True
    assert report["watermark"]["found"] and report["watermark"]["frames"] == FRAMES


def test_camera_clip_has_neither(media, capsys):
    report = verify_json(media["clip"], capsys)
    assert not report["metadata"]["found"] and report["metadata"]["record"] is None
    assert not report["watermark"]["found"] and report["watermark"]["frames"] == FRAMES
    assert main(["verify", str(media["clip"]), "--max-frames", "4"]) == 0
    text = capsys.readouterr().out
    assert "no provenance record" in text and "watermark: not found" in text and "4 frame(s)" in text


@pytest.mark.parametrize("name", ["missing.mp4", "corrupt"])
def test_unreadable_input_is_one_line(media, tmp_path, capsys, name):
    path = tmp_path / name if name == "missing.mp4" else media[name]
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("retarget: error:") and len(err.strip().splitlines()) == 1


def test_the_text_report_says_when_frames_were_too_small_to_carry_the_mark():
    """A record that asked for the watermark, on frames too small to carry it (the writer leaves them unmarked):
    the metadata line says so instead of an unqualified "on"."""
    from retarget.provenance import watermark
    from retarget.provenance.verify import format_report

    record = {"tool": "retarget", "version": "0", "command": "run", "watermark": True, "synthetic": True}
    small = watermark.detect(np.zeros((2, 32, 32, 3), np.uint8))
    assert small["bit_accuracy"] is None and "too small" in small["reason"]
    text = format_report({"file": "a.mp4", "metadata": {"found": True, "record": record}, "watermark": small})
    assert "watermark on when written, but the frames are too small to carry it" in text.splitlines()[1]
    large = watermark.detect(np.zeros((2, 256, 256, 3), np.uint8))
    text = format_report({"file": "a.mp4", "metadata": {"found": True, "record": record}, "watermark": large})
    assert text.splitlines()[1].endswith("watermark on when written")
    off = format_report({"file": "a.mp4", "metadata": {"found": True, "record": {**record, "watermark": False}},
                         "watermark": small})
    assert off.splitlines()[1].endswith("watermark off when written")
