"""``retarget eval`` of side-by-side renders (``run``: driving | result, ``edit``: original | result): the result
panel is cut out exactly, from the provenance record and the left panel's clip, and scored alone; a layout that
cannot be located is a one-line error said before any model loads.

The box is checked against the real composition (:func:`retarget.video.compose.side_by_side_chunk`) and the
encoder's odd-size fit on noise pictures; end to end, a lossless side-by-side file scores exactly as a lossless
file of its result alone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import av
import numpy as np
import pytest

from retarget.cli import main
from retarget.evaluation.clip import EvalInputs, evaluate_clip
from retarget.evaluation.panels import Box, edit_result_box, run_result_box
from retarget.evaluation.report import write_report
from retarget.provenance.metadata import container_tags, provenance_record, read_provenance
from retarget.testing.media import moving_face_frames
from retarget.video.compose import side_by_side_chunk
from retarget.video.encoding import encoded_size, fit_frame
from retarget.video.reader import VideoReader
from tests.cli.conftest import RATE

#: The result's frames with a face (of 12): the driving/original clip has one in frames 0-9.
RESULT_FACES = 6


def _noise(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encoded(frame, pix_fmt, odd_size):
    """``frame`` as the encoder fits it (pad/crop of the right/bottom edge)."""
    width, height = encoded_size(frame.shape[1], frame.shape[0], SimpleNamespace(pix_fmt=pix_fmt, odd_size=odd_size))
    return fit_frame(frame, width, height)


@pytest.mark.parametrize("driving, side, pix_fmt, odd_size, expected", [
    ((160, 120), 32, "yuv420p", "pad", Box(43, 0, 75, 32)),   # 43 + 32 = 75 columns, padded to 76
    ((160, 120), 32, "yuv420p", "crop", Box(43, 0, 74, 32)),  # cropped to 74: the result loses its last column
    ((160, 120), 32, "yuv444p", "pad", Box(43, 0, 75, 32)),   # no fit
    ((512, 512), 32, "yuv420p", "pad", Box(32, 0, 64, 32)),
    ((45, 90), 48, "yuv420p", "pad", Box(24, 0, 72, 48)),     # portrait driving
    ((1280, 720), 512, "yuv420p", "pad", Box(910, 0, 1422, 512)),
])
def test_run_box_is_the_composed_result(driving, side, pix_fmt, odd_size, expected):
    rng = np.random.default_rng(0)
    driving_frame, result = _noise(rng, driving[1], driving[0]), _noise(rng, side, side)
    frame = _encoded(side_by_side_chunk(driving_frame[None], result[None], height=side)[0], pix_fmt, odd_size)
    box = run_result_box((frame.shape[1], frame.shape[0]), driving, pix_fmt, odd_size)
    assert box == expected
    width, height = box.size
    np.testing.assert_array_equal(box.crop(frame), result[:height, :width])


@pytest.mark.parametrize("driving, photo, expected", [
    ((512, 512), (352, 512), Box(512, 0, 864, 512)),   # a portrait photo: the result panel is 352 wide
    ((160, 120), (300, 200), Box(267, 0, 567, 200)),   # a landscape one, the driving clip scaled to its 200 rows
    ((1280, 720), (2048, 1536), Box(1280, 0, 2240, 720)),  # canvas 1920x1440, both panels at 720 rows
])
def test_run_paste_back_box_is_the_photos_panel(driving, photo, expected):
    """``run --paste-back --side-by-side``: the result is the photo's canvas at the frame's rows, not a square."""
    from retarget.jobs.run import SIDE_BY_SIDE_MAX_ROWS, paste_back_canvas_size

    rng = np.random.default_rng(2)
    canvas = paste_back_canvas_size(*photo)
    rows = min(canvas[1], SIDE_BY_SIDE_MAX_ROWS)
    driving_frame, result = _noise(rng, driving[1], driving[0]), _noise(rng, canvas[1], canvas[0])
    frame = _encoded(side_by_side_chunk(driving_frame[None], result[None], height=rows)[0], "yuv420p", "pad")
    box = run_result_box((frame.shape[1], frame.shape[0]), driving, result_size=canvas)
    assert box == expected
    assert run_result_box((frame.shape[1], frame.shape[0]), driving) is None or photo[0] == photo[1]
    scaled = side_by_side_chunk(result[None], result[None], height=rows)[0][:, :box.size[0]]
    np.testing.assert_array_equal(box.crop(frame), scaled[:box.size[1]])


@pytest.mark.parametrize("original, odd_size, expected", [
    ((160, 120), "pad", Box(160, 0, 320, 120)),
    ((81, 61), "pad", Box(81, 0, 162, 61)),   # 162 x 61, padded to 62 rows
    ((81, 61), "crop", Box(81, 0, 162, 60)),  # cropped to 60 rows
])
def test_edit_box_is_the_composed_result(original, odd_size, expected):
    rng = np.random.default_rng(1)
    left, result = _noise(rng, original[1], original[0]), _noise(rng, original[1], original[0])
    frame = _encoded(side_by_side_chunk(left[None], result[None])[0], "yuv420p", odd_size)
    box = edit_result_box((frame.shape[1], frame.shape[0]), original, "yuv420p", odd_size)
    assert box == expected
    width, height = box.size
    np.testing.assert_array_equal(box.crop(frame), result[:height, :width])


def test_sizes_that_do_not_compose_have_no_box():
    assert run_result_box((76, 32), (512, 512)) is None  # a 512x512 driving makes 64x32
    assert run_result_box((64, 32), (160, 120)) is None
    assert edit_result_box((320, 120), (161, 120)) is None


def write_lossless(path, frames, command=None, settings=None):
    """A lossless clip (x264 qp 0, yuv444p) of ``frames``; with ``command`` a provenance record saying it is that
    command's render with ``settings`` (default: side by side)."""
    with av.open(str(path), mode="w") as container:
        if command is not None:
            if settings is None:
                settings = {"side_by_side": True, "encoder": {"pix_fmt": "yuv444p", "odd_size": "pad"}}
            container.metadata.update(container_tags(provenance_record(command, settings, models_dir=None,
                                                                       watermarked=False)))
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for k, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = k
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _decoded(path):
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


def _eval(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    return code, capsys.readouterr().err


def _common(face_models_dir):
    return ["--models", face_models_dir, "--device", "cpu", "--no-progress", "--smooth", "none"]


def _evaluate(models, output, **inputs):
    return evaluate_clip(EvalInputs(output, smooth="none", **inputs), models, progress=False)


def _assert_same_scores(a, b):
    """Every per-frame number and the summary (but the inputs and the panel) are the same."""
    for name in ("output_face", "reference_face", "achieved", "target", "target_valid", "driving_values",
                 "landmarks", "reference_landmarks", "flicker", "reference_flicker"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.identity.keys() == b.identity.keys()
    for name in a.identity:
        np.testing.assert_array_equal(a.identity[name], b.identity[name])

    def scores(summary):
        return {key: value for key, value in summary.items() if key not in ("inputs", "output_panel")}

    assert scores(a.summary) == scores(b.summary)


def _result_frames(clip):
    """The clip's decoded frames with the face kept in the first :data:`RESULT_FACES` frames only."""
    frames = _decoded(clip)
    frames[RESULT_FACES:] = 96
    return frames


def test_run_side_by_side_scores_the_result_alone(tmp_path, media, random_face_models):
    """driving | result, the result a 96x96 face clip with a face in frames 0-5: the scores are those of the
    result written alone (coverage 6/12), not of the driving half (which has a face in frames 0-9)."""
    result = moving_face_frames(12, width=96, height=96, blank=tuple(range(RESULT_FACES, 12)))
    driving = _decoded(media["clip"])
    composed = write_lossless(tmp_path / "sbs.mp4", side_by_side_chunk(driving, result, height=96), "run")
    alone = write_lossless(tmp_path / "alone.mp4", result)
    assert read_provenance(composed)["settings"]["side_by_side"] is True
    np.testing.assert_array_equal(_decoded(composed)[:, :, 128:], _decoded(alone))  # 160x120 scaled to 128x96
    sbs, single = (_evaluate(random_face_models, clip, driving=media["clip"], identity=media["photo"])
                   for clip in (composed, alone))
    assert sbs.output_panel == Box(128, 0, 224, 96) and single.output_panel is None
    assert sbs.summary["output_panel"] == {"layout": "driving | result", "box": [128, 0, 224, 96]}
    assert sbs.output_face.tolist() == [True] * RESULT_FACES + [False] * (12 - RESULT_FACES)
    assert sbs.summary["coverage"]["coverage"] == 0.5
    _assert_same_scores(sbs, single)
    write_report(sbs, tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["output_panel"]["box"] == [128, 0, 224, 96]
    assert "only the result panel, columns 128-223 and rows 0-95" in (tmp_path / "rep" / "report.html").read_text()


def test_edit_side_by_side_scores_the_result_alone(tmp_path, media, random_face_models):
    """original | result, the result the original's own pixels in frames 0-5 and grey after: identity against
    the original's face is 1 wherever the result has a face, coverage 6/12, as for the result written alone."""
    original = write_lossless(tmp_path / "original.mp4", _decoded(media["clip"]))
    result = _result_frames(original)
    composed = write_lossless(tmp_path / "sbs.mp4", side_by_side_chunk(_decoded(original), result), "edit")
    alone = write_lossless(tmp_path / "alone.mp4", result)
    sbs, single = (_evaluate(random_face_models, clip, original=original, driving=original)
                   for clip in (composed, alone))
    assert sbs.summary["output_panel"] == {"layout": "original | result", "box": [160, 0, 320, 120]}
    assert sbs.summary["coverage"]["output_face_frames"] == RESULT_FACES
    for summary in sbs.summary["identity"].values():
        assert summary["mean"] == pytest.approx(1.0, abs=1e-5) and summary["frames"] == RESULT_FACES
    assert sbs.summary["expression"]["exp_mse"] == pytest.approx(0.0, abs=1e-8)  # SMIRK's batches differ
    _assert_same_scores(sbs, single)


@pytest.mark.parametrize("case", ["run_as_edit", "edit_as_run", "wrong_driving"])
def test_a_panel_that_cannot_be_located_is_refused_before_any_model(tmp_path, capsys, media, face_models_dir,
                                                                   monkeypatch, case):
    from retarget.faces import models as face_models

    def no_models(*args, **kwargs):
        raise AssertionError("a face model was loaded")

    monkeypatch.setattr(face_models.FaceModels, "load", no_models)
    driving = _decoded(media["clip"])
    square = np.zeros((12, 96, 96, 3), np.uint8)
    if case == "edit_as_run":
        clip = write_lossless(tmp_path / "sbs.mp4", side_by_side_chunk(driving, driving), "edit")
    else:
        clip = write_lossless(tmp_path / "sbs.mp4", side_by_side_chunk(driving, square, height=96), "run")
    if case == "run_as_edit":
        args = ["--original", media["clip"], "--driving", media["clip"]]
    elif case == "wrong_driving":  # a 96x96 driving would make 192x96, not 224x96
        other = write_lossless(tmp_path / "other.mp4", square)
        args = ["--driving", other, "--identity", media["photo"]]
    else:
        args = ["--driving", media["clip"], "--identity", media["photo"]]
    code, err = _eval(capsys, clip, *args, "-o", tmp_path / "rep", *_common(face_models_dir))
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retarget: error:"), err
    expected = {
        "run_as_edit": "a side-by-side `retarget run` render (driving | result): evaluate it as a run, with "
                       "--driving and --identity",
        "edit_as_run": "a side-by-side `retarget edit` render (original | result): evaluate it as an edit, with "
                       "--original VIDEO",
        "wrong_driving": "whose 224x96 frame is not composed from other.mp4's 96x96: the result cannot be cut out",
    }[case]
    assert expected in lines[0]
    assert not (tmp_path / "rep").exists()
