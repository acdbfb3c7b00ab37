"""`run MOTION.npz`: a motion file (from `retarget extract`) drives the photo as the clip it came from would."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from retarget.cli import main
from retarget.jobs.session import RenderSession
from retarget.motion.motion_file import load_motion, save_motion
from retarget.motion.track import MotionTrack
from retarget.video.reader import VideoReader
from tests.cli.conftest import FRAMES

EXACT = ["--crf", "0", "--preset", "ultrafast", "--pix-fmt", "yuv444p", "--no-watermark"]


def decoded(path) -> np.ndarray:
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


@pytest.fixture
def renders(monkeypatch):
    """The expressions and frame numbers of every render call, in order."""
    calls, original = [], RenderSession.render

    def recorded(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        calls.append((np.array(expressions), np.array(frame_indices)))
        return original(self, id_embeds, expressions, frame_indices, reference, desc, times=times)

    monkeypatch.setattr(RenderSession, "render", recorded)
    return calls


def rendered(calls) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c[0] for c in calls]), np.concatenate([c[1] for c in calls])


@pytest.mark.parametrize("extra", [[], ["--relative", "--start", "0.1", "--end", "0.35"]])
def test_the_motion_of_a_clip_renders_as_the_clip_does(extra, renders, media, fast_args, tmp_path):
    """The same expressions, frame numbers and faces as driving with the clip itself; no audio (a motion file has
    none), the clip's exact rate."""
    motion = tmp_path / "clip.npz"
    assert main([str(a) for a in ["extract", media["clip"], "-o", motion, *fast_args]]) == 0
    from_clip, from_motion = tmp_path / "clip.mp4", tmp_path / "motion.mp4"
    common = ["--identity", media["photo"], *fast_args, *EXACT, *extra]
    assert main([str(a) for a in ["run", media["clip"], "-o", from_clip, *common]]) == 0
    clip_calls = list(renders)
    renders.clear()
    assert main([str(a) for a in ["run", motion, "-o", from_motion, *common]]) == 0
    (clip_values, clip_frames), (motion_values, motion_frames) = rendered(clip_calls), rendered(renders)
    np.testing.assert_array_equal(motion_frames, clip_frames)
    np.testing.assert_allclose(motion_values, clip_values, rtol=0, atol=1e-6)
    count = FRAMES if not extra else 8  # frames with 0.1 <= t < 0.35 s at 30000/1001 fps: 3..10
    assert len(motion_frames) == count
    np.testing.assert_array_equal(decoded(from_motion), decoded(from_clip))
    with av.open(str(from_motion)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
        assert len(container.streams.audio) == 0


def test_a_variable_rate_motion_keeps_its_times(media, fast_args, tmp_path):
    """Frames at 0, 0.1, 0.15, 0.3 and 0.32 s come out at those times (to the 1/90000 s time base)."""
    times = np.array([0.0, 0.1, 0.15, 0.3, 0.32])
    values = np.random.default_rng(0).normal(size=(5, 55)).astype(np.float32) * 0.1
    motion = save_motion(MotionTrack(values, np.ones(5, bool), times, Fraction(25)), tmp_path / "vfr.npz")
    out = tmp_path / "out.mp4"
    assert main([str(a) for a in ["run", motion, "--identity", media["photo"], "-o", out, *fast_args]]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        shown = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
    np.testing.assert_allclose(shown, times, atol=1e-3)


def test_a_motion_file_cannot_be_shown_side_by_side(media, fast_args, tmp_path, capsys):
    motion = save_motion(MotionTrack.constant_rate(np.zeros((3, 55), np.float32), None, 25), tmp_path / "m.npz")
    out = tmp_path / "out.mp4"
    assert main([str(a) for a in ["run", motion, "--identity", media["photo"], "-o", out, "--side-by-side",
                                  *fast_args]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retarget: error: {motion}: a motion file has no pictures to show beside the result: drop "
                   "--side-by-side, or drive with the video the motion was extracted from"]
    assert not out.exists()


def test_a_motion_range_outside_the_file_is_one_line(media, fast_args, tmp_path, capsys):
    motion = save_motion(MotionTrack.constant_rate(np.zeros((3, 55), np.float32), None, 25), tmp_path / "m.npz")
    assert main([str(a) for a in ["run", motion, "--identity", media["photo"], "-o", tmp_path / "o.mp4",
                                  "--start", "5", *fast_args]]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"retarget: error: {motion}: no frames between 5.0 s and the end"


def test_frames_without_a_face_in_the_motion_are_named(media, fast_args, tmp_path, caplog):
    track = load_motion(_extracted(media, fast_args, tmp_path))
    assert not track.valid[-2:].any()  # the clip's last two frames have no face
    assert main([str(a) for a in ["run", tmp_path / "clip.npz", "--identity", media["photo"], "-o",
                                  tmp_path / "o.mp4", *fast_args]]) == 0
    assert f"clip.npz: no face in 2 of {FRAMES} frames; those frames take the expressions of the neighbouring " \
           "frames with a face" in caplog.text


def _extracted(media, fast_args, tmp_path):
    motion = tmp_path / "clip.npz"
    assert main([str(a) for a in ["extract", media["clip"], "-o", motion, *fast_args]]) == 0
    return motion
