"""`run MOTION.npz`: a motion file (from `retarget extract`) drives the photo as the clip it came from would."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from retarget.cli import main
from retarget.jobs.session import RenderSession
from retarget.motion.motion_file import load_motion, save_motion
from retarget.motion.track import MotionTrack
from retarget.testing.media import moving_face_frames, write_clip
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
    assert f"clip.npz: no face in 2 of {FRAMES} frames (0.33-0.40 s); those frames take the expressions of the " \
           "neighbouring frames with a face" in caplog.text


def _extracted(media, fast_args, tmp_path):
    motion = tmp_path / "clip.npz"
    assert main([str(a) for a in ["extract", media["clip"], "-o", motion, *fast_args]]) == 0
    return motion


def test_a_short_gap_reads_as_in_the_clip(renders, media, fast_args, tmp_path):
    """Frames 5-6 have no detection: the scan bridges the gap and reads SMIRK there; the motion file keeps those
    readings (marked ``filled``, not valid), and a run driven by it takes them as the clip's run does, so the
    expressions after smoothing are the same."""
    clip = write_clip(tmp_path / "gap.mp4", moving_face_frames(12, covered=(5, 6)), Fraction(25))
    motion = tmp_path / "gap.npz"
    assert main([str(a) for a in ["extract", clip, "-o", motion, *fast_args]]) == 0
    track = load_motion(motion)
    assert not track.valid[5:7].any() and track.filled[5:7].all() and track.filled.sum() == 2
    common = ["--identity", media["photo"], *fast_args, *EXACT]
    assert main([str(a) for a in ["run", clip, "-o", tmp_path / "clip.mp4", *common]]) == 0
    clip_values, _ = rendered(renders)
    renders.clear()
    assert main([str(a) for a in ["run", motion, "-o", tmp_path / "motion.mp4", *common]]) == 0
    motion_values, _ = rendered(renders)
    np.testing.assert_allclose(motion_values, clip_values, rtol=0, atol=1e-6)
    # a file without the record (an earlier version's) interpolates the gap instead: close, not equal
    legacy = save_motion(MotionTrack(track.values, track.valid, track.times, track.rate, track.metadata),
                         tmp_path / "legacy.npz")
    renders.clear()
    assert main([str(a) for a in ["run", legacy, "-o", tmp_path / "legacy.mp4", *common]]) == 0
    legacy_values, _ = rendered(renders)
    assert 0 < np.abs(legacy_values - clip_values).max() < 0.5


def test_a_range_without_a_face_is_one_line(media, fast_args, tmp_path, capsys):
    values = np.zeros((50, 55), np.float32)
    valid = np.arange(50) >= 25  # a face from 1 s on
    motion = save_motion(MotionTrack.constant_rate(values, valid, 25), tmp_path / "late.npz")
    out = tmp_path / "o.mp4"
    assert main([str(a) for a in ["run", motion, "--identity", media["photo"], "-o", out, "--end", "0.5",
                                  *fast_args]]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"retarget: error: {motion}: no frame shows a face between 0 s and 0.5 s"
    assert not out.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_clip_at_a_millisecond_time_base_keeps_its_exact_rate(legacy, media, fast_args, tmp_path):
    """Matroska stores 29.97 fps in milliseconds (0, 33, 67, 100 ms ...): the clip is constant-rate, and a run
    driven by its motion has the exact 30000/1001 rate, whether the file records the rate kind (``extract``) or
    not (an earlier version's file: the times' spread decides)."""
    clip = write_clip(tmp_path / "clip.mkv", moving_face_frames(10), Fraction(30000, 1001), audio=False)
    motion = tmp_path / "clip.npz"
    assert main([str(a) for a in ["extract", clip, "-o", motion, *fast_args]]) == 0
    track = load_motion(motion)
    assert track.metadata["variable_rate"] == "no" and np.ptp(np.diff(track.times)) > 1e-4  # 33 or 34 ms apart
    if legacy:
        metadata = {k: v for k, v in track.metadata.items() if k != "variable_rate"}
        motion = save_motion(MotionTrack(track.values, track.valid, track.times, track.rate, metadata),
                             tmp_path / "legacy.npz")
    out = tmp_path / "out.mp4"
    assert main([str(a) for a in ["run", motion, "--identity", media["photo"], "-o", out, *fast_args]]) == 0
    info = VideoReader(out).info
    assert info.frame_rate == Fraction(30000, 1001) and not info.is_vfr and info.frame_count == 10


@pytest.mark.parametrize("command", ["run-clip", "run-motion", "edit"])
def test_the_neutral_frame_must_show_a_face(command, media, fast_args, tmp_path, capsys):
    """Frame 10 of the clip has no face: gap filling gives it values, but it is no neutral face to measure from."""
    motion = _extracted(media, fast_args, tmp_path)
    out = tmp_path / "o.mp4"
    if command == "edit":
        argv = ["edit", media["clip"], "--expression", media["clip"]]
    else:
        argv = ["run", motion if command == "run-motion" else media["clip"], "--identity", media["photo"]]
    assert main([str(a) for a in argv + ["-o", out, "--relative", "--neutral-frame", "10", *fast_args]]) == 1
    which = "the expression source clip.mp4" if command == "edit" else "the driving motion"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"retarget: error: --neutral-frame 10 is not a valid frame of {which} (no face was found in it)")
    assert not out.exists()



@pytest.mark.parametrize("command", ["run-clip", "run-motion", "edit-clip", "edit-motion"])
def test_a_neutral_frame_in_a_bridged_gap_is_refused(command, media, fast_args, tmp_path, capsys):
    """Frames 5 and 6 have no face, a gap short enough to bridge: they render with interpolated expressions, but
    the neutral frame must be one where the face was found, in a clip and in its motion file alike."""
    clip = write_clip(tmp_path / "gap.mp4", moving_face_frames(FRAMES, covered=(5, 6)), Fraction(25))
    motion = tmp_path / "gap.npz"
    assert main([str(a) for a in ["extract", clip, "-o", motion, *fast_args]]) == 0
    assert load_motion(motion).filled[5:7].all()  # bridged, not merely filled afterwards
    source = motion if command.endswith("motion") else clip
    argv = (["run", source, "--identity", media["photo"]] if command.startswith("run") else
            ["edit", media["clip"], "--expression", source])
    out = tmp_path / "o.mp4"
    assert main([str(a) for a in argv + ["-o", out, "--relative", "--neutral-frame", "5", *fast_args]]) == 1
    which = "the driving motion" if command.startswith("run") else f"the expression source {Path(source).name}"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"retarget: error: --neutral-frame 5 is not a valid frame of {which} (no face was found in it)")
    assert not out.exists()
    assert main([str(a) for a in argv + ["-o", out, "--relative", "--neutral-frame", "4", *fast_args]]) == 0

def test_face_scan_options_are_named_unused_with_a_motion_file(media, tmp_path, capsys):
    argv = ["run", str(tmp_path / "missing.npz"), "--identity", str(media["photo"]), "-o", str(tmp_path / "o.mp4"),
            "--face-index", "1", "--smirk-channels", "bgr"]
    assert main(argv) == 1  # the motion file is missing: the job stops before any work
    assert capsys.readouterr().err.splitlines()[0] == ("retarget run: --face-index, --smirk-channels do nothing here "
                                                       "(options of the face scan: a motion file holds its expressions)")


def test_edit_takes_a_motion_file_as_its_clip(renders, media, fast_args, tmp_path):
    """``edit`` with SOURCE a motion file renders the expressions it renders with SOURCE the clip the motion came
    from, the short gap's readings included."""
    source = write_clip(tmp_path / "gap.mp4", moving_face_frames(FRAMES, covered=(5, 6)), Fraction(30000, 1001))
    motion = tmp_path / "gap.npz"
    assert main([str(a) for a in ["extract", source, "-o", motion, *fast_args]]) == 0
    for expression in (source, motion):
        assert main([str(a) for a in ["edit", media["clip"], "--expression", expression, "-o",
                                      tmp_path / f"{expression.suffix[1:]}.mp4", *fast_args, *EXACT]]) == 0
    calls = len(renders) // 2
    (video_values, video_frames), (motion_values, motion_frames) = rendered(renders[:calls]), rendered(renders[calls:])
    np.testing.assert_array_equal(motion_frames, video_frames)
    np.testing.assert_allclose(motion_values, video_values, rtol=0, atol=1e-6)
