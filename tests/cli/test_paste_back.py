"""`run --paste-back`: the identity photo with each rendered face pasted back where the photo's face is."""

from __future__ import annotations

import shutil

import av
import cv2
import numpy as np
import pytest

from retarget.cli import main
from retarget.faces.alignment import ffhq_transform
from retarget.faces.models import FaceModels
from retarget.faces.pasteback import paste_back
from retarget.jobs import run as run_module
from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession
from retarget.testing.media import face_photo
from retarget.video.reader import VideoReader
from retarget.video.resume import job_digest
from tests.cli.conftest import FRAMES

EXACT = ["--crf", "0", "--preset", "ultrafast", "--pix-fmt", "yuv444p", "--no-watermark"]


def decoded(path) -> np.ndarray:
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


def blurred(image: np.ndarray) -> np.ndarray:
    """The picture at about the detail of the tiny model's 32-pixel face on the 200-pixel photo (6 px per crop px)."""
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 4)


@pytest.fixture
def own_face(monkeypatch):
    """The render returns the photo's own aligned face (the reference image) for every frame."""

    def render(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        return np.repeat(reference[None], len(frame_indices), axis=0)

    monkeypatch.setattr(RenderSession, "render", render)


def test_the_faces_go_back_where_the_photos_face_is(own_face, media, fast_args, tmp_path, monkeypatch):
    """Pasting the photo's own face back gives the photo again (at the face crop's detail): the placement is right,
    also for a photo larger than the output's longest side (scaled down, keypoints with it)."""
    monkeypatch.setattr(run_module, "PASTE_BACK_MAX_SIDE", 200)  # the 300x300 test photo becomes 200x200
    out = tmp_path / "out.mp4"
    assert main([str(a) for a in ["run", media["clip"], "--identity", media["photo"], "-o", out, "--paste-back",
                                  *fast_args, *EXACT]]) == 0
    frames = decoded(out)
    assert frames.shape == (FRAMES, 200, 200, 3)
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1  # the driving clip's audio, as without --paste-back
    canvas = cv2.resize(face_photo(), (200, 200), interpolation=cv2.INTER_AREA)
    error = np.abs(blurred(frames[0]) - blurred(canvas))
    assert error.mean() < 1.5 and error.max() < 40, (error.mean(), error.max())
    # the same check tells a misplaced face: the 300-pixel photo's keypoints used on the 200-pixel photo
    keypoints = FaceModels(None).detector.detect(face_photo())[0].keypoints
    face = ffhq_transform(keypoints, 32).warp(face_photo())
    misplaced = np.abs(blurred(paste_back(canvas, face, ffhq_transform(keypoints, 32))) - blurred(canvas))
    assert misplaced.mean() > 5 and misplaced.max() > 100, (misplaced.mean(), misplaced.max())
    # every frame got the same face pasted (the render returned the same face for each)
    assert np.abs(frames.astype(int) - frames[:1]).max() <= 2


def test_side_by_side_panels_take_the_pasted_photos_height_up_to_a_limit(own_face, media, fast_args, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(run_module, "SIDE_BY_SIDE_MAX_ROWS", 100)
    out = tmp_path / "out.mp4"
    assert main([str(a) for a in ["run", media["clip"], "--identity", media["photo"], "-o", out, "--paste-back",
                                  "--side-by-side", *fast_args]]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        # driving 160x120 and the 300x300 photo, both at 100 rows: 133 + 100 = 233 columns, padded to even
        assert (stream.width, stream.height) == (234, 100)


def test_the_render_key_names_paste_back_only_when_it_is_on(media, cli_models):
    models, base = cli_models
    options = JobOptions(models=models, base_model=str(base), device="cpu")
    plain = run_module.run_job_key(media["clip"], media["photo"], options, True, False, 0, FRAMES)
    pasted = run_module.run_job_key(media["clip"], media["photo"], options, True, False, 0, FRAMES, paste_back=True)
    assert "paste_back" not in plain  # the keys of other renders are those of earlier versions: they resume
    assert pasted["paste_back"] == {"max_side": 1920, "side_by_side_rows": 720}
    assert job_digest(plain) != job_digest(pasted)


def test_batch_pastes_back_with_identity_only(own_face, media, fast_args, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copyfile(media["clip"], clips / "a.mp4")
    assert main([str(a) for a in ["batch", clips, "-o", tmp_path / "out", "--identity", media["photo"],
                                  "--paste-back", *fast_args]]) == 0
    with av.open(str(tmp_path / "out" / "a.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (300, 300, FRAMES)
    capsys.readouterr()
    assert main([str(a) for a in ["batch", clips, "-o", tmp_path / "edits", "--expression", media["photo"],
                                  "--paste-back", *fast_args]]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "retarget: error: --paste-back is for --identity (run); edit always pastes back"]
    assert main([str(a) for a in ["batch", clips, "-o", tmp_path / "edits", "--expression", media["photo"],
                                  "--no-reference", *fast_args]]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "retarget: error: --no-reference is for --identity (run); edit always uses the Reference Adapter"]
    assert not (tmp_path / "edits").exists()


@pytest.mark.parametrize("paste", [False, True])
def test_color_match_is_named_unused_by_run_without_paste_back(paste, media, tmp_path, capsys):
    argv = ["run", str(tmp_path / "missing.mp4"), "--identity", str(media["photo"]), "-o", str(tmp_path / "o.mp4"),
            "--color-match"] + ["--paste-back"] * paste
    assert main(argv) == 1  # the driving clip is missing: the job stops before any work
    err = capsys.readouterr().err.splitlines()
    note = "retarget run: --color-match does nothing here (an option of edit and of run --paste-back)"
    assert (note in err) == (not paste)


def test_the_photo_canvas_keeps_small_photos_and_scales_large_ones():
    photo = run_module.PhotoIdentity(path=None, image=np.zeros((3000, 4000, 3), np.uint8),
                                     keypoints=np.array([[1500, 1200], [2500, 1200], [2000, 1600], [1600, 2000],
                                                         [2400, 2000]], np.float32),
                                     embedding=np.zeros(512, np.float32), expression=np.zeros(55, np.float32))
    canvas, transform = photo.canvas(512)
    assert canvas.shape == (1440, 1920, 3)
    full = ffhq_transform(photo.keypoints, 512)
    # the same face: a point of the full-size photo maps to the crop as its scaled point does
    point = np.array([2000.0, 1600.0])
    scaled = (point + 0.5) * 0.48 - 0.5
    np.testing.assert_allclose(transform.to_crop(scaled[None])[0], full.to_crop(point[None])[0], atol=1e-3)
    small = run_module.PhotoIdentity(path=None, image=np.zeros((300, 200, 3), np.uint8), keypoints=photo.keypoints / 10,
                                     embedding=photo.embedding, expression=photo.expression)
    canvas, _ = small.canvas(512)
    assert canvas.shape == (300, 200, 3)
