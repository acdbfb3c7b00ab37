"""Motion options (relative mode, neutral frame, per-part gains), face choice by photo, time ranges, side-by-side
and pipeline switches, checked on what reaches the pipeline and on the outputs."""

from __future__ import annotations


import shutil

import numpy as np
import pytest

from retarget.cli import build_parser, main
from retarget.errors import InputError
from retarget.jobs import extract as extract_module
from retarget.faces.models import FaceModels
from retarget.jobs.frames import photo_face
from retarget.jobs.session import RenderSession
from retarget.motion import PartGains, apply_gains, fill_gaps, load_motion, neutral_frame, relative_motion
from retarget.video.probe import probe_video
from tests.cli.conftest import BLANK, FRAMES, RATE
from retarget.testing.media import face_photo, two_face_frames, write_clip

GAINS = ["--expression-gain", "0.5", "--eyelid-gain", "2.0", "--jaw-gain", "0.0"]
PART_GAINS = PartGains(expression=0.5, eyelid=2.0, jaw=0.0)


@pytest.fixture
def rendered(monkeypatch):
    """Records what reaches the pipeline: a list of (frame_indices, expressions) per render call."""
    calls = []
    original = RenderSession.render

    def recording(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        calls.append((np.asarray(frame_indices).copy(), np.asarray(expressions).copy()))
        return original(self, id_embeds, expressions, frame_indices, reference, desc, times=times)

    monkeypatch.setattr(RenderSession, "render", recording)
    return calls


def expressions_of(calls) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices [M], expressions [M, 55]) over all recorded render calls."""
    return np.concatenate([c[0] for c in calls]), np.concatenate([c[1] for c in calls])


def clip_motion(clip, fast_args, tmp_path):
    """The clip's raw track (via ``extract``) with every gap filled: the track ``--smooth none`` renders."""
    motion = tmp_path / "clip.npz"
    assert main(["extract", str(clip), "-o", str(motion), *fast_args]) == 0
    return load_motion(motion), fill_gaps(load_motion(motion), max_gap_seconds=float("inf"))


def photo_expression(photo, models_dir) -> np.ndarray:
    faces = FaceModels(models_dir, device="cpu")
    image, face = photo_face(photo, faces)
    return faces.expressions.extract([image], face.keypoints[None])[0]


def test_run_absolute_gains_reach_the_pipeline(media, fast_args, cli_models, tmp_path, rendered):
    _, filled = clip_motion(media["clip"], fast_args, tmp_path)
    out = tmp_path / "gains.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--smooth", "none",
                 *GAINS, *fast_args]) == 0
    indices, values = expressions_of(rendered)
    assert indices.tolist() == list(range(FRAMES))
    np.testing.assert_allclose(values, apply_gains(filled, PART_GAINS).values, atol=1e-5)
    assert np.all(values[:, 52:55] == 0)  # jaw gain 0


@pytest.mark.parametrize("neutral", ["auto", "2"])
def test_run_relative_adds_the_photos_expression(neutral, media, fast_args, cli_models, tmp_path, rendered):
    _, filled = clip_motion(media["clip"], fast_args, tmp_path)
    own = photo_expression(media["photo"], cli_models[0])
    out = tmp_path / "relative.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--smooth", "none",
                 "--relative", "--neutral-frame", neutral, *GAINS, *fast_args]) == 0
    index = neutral_frame(filled) if neutral == "auto" else int(neutral)
    expected = relative_motion(filled, own, index, PART_GAINS).values
    _, values = expressions_of(rendered)
    np.testing.assert_allclose(values, expected, atol=1e-5)
    np.testing.assert_allclose(values[index, :50], own[:50], atol=1e-5)  # the neutral frame gets the photo's face


def test_edit_relative_adds_each_frames_own_expression(media, fast_args, tmp_path, rendered):
    raw, filled = clip_motion(media["clip"], fast_args, tmp_path)
    source = tmp_path / "source.npz"
    assert main(["extract", str(media["clip"]), "-o", str(source), *fast_args]) == 0
    out = tmp_path / "edited.mp4"
    rendered.clear()
    assert main(["edit", str(media["clip"]), "--expression", str(source), "-o", str(out), "--smooth", "none",
                 "--relative", *GAINS, *fast_args]) == 0
    # the source is the clip's own track: own + gains * (track - track[neutral])
    expected = relative_motion(filled, filled.values, neutral_frame(filled), PART_GAINS).values
    indices, values = expressions_of(rendered)
    assert indices.tolist() == [k for k in range(FRAMES) if raw.valid[k]]
    np.testing.assert_allclose(values, expected[indices], atol=1e-5)


def test_relative_needs_a_motion_source_and_a_valid_neutral_frame(media, fast_args, tmp_path, capsys, caplog):
    out = tmp_path / "out.mp4"
    code = main(["edit", str(media["clip"]), "--expression", str(media["photo"]), "-o", str(out), "--relative",
                 *fast_args])
    assert code == 1 and "--relative needs a video or motion file" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    shutil.copyfile(media["clip"], tmp_path / "in" / "a.mp4")
    code = main(["batch", str(tmp_path / "in"), "--expression", str(media["photo"]), "-o", str(tmp_path / "b"),
                 "--relative", *fast_args])
    assert code == 1 and "--relative needs a video or motion file" in capsys.readouterr().err
    assert not any("face detector" in r.getMessage() for r in caplog.records)  # said before any model loaded
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--relative",
                 "--neutral-frame", "99", *fast_args])
    assert code == 1 and "--neutral-frame 99 is out of range" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.mp4.retarget-work").exists()
    with pytest.raises(SystemExit):
        main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--neutral-frame",
              "first", *fast_args])


def test_face_reference_follows_the_person_in_the_photo(fast_args, tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "two.mp4", two_face_frames(4), RATE, audio=False)
    followed = []
    original = extract_module.scan_clip

    def recording_scan(*args, **kwargs):
        scan = original(*args, **kwargs)
        followed.append(scan.keypoints[scan.valid][:, :, 0].mean())  # mean keypoint x of the followed face
        return scan

    monkeypatch.setattr(extract_module, "scan_clip", recording_scan)
    from PIL import Image

    Image.fromarray(face_photo()).save(tmp_path / "astronaut.png")
    assert main(["extract", str(clip), "-o", str(tmp_path / "a.npz"), *fast_args]) == 0
    assert main(["extract", str(clip), "-o", str(tmp_path / "b.npz"), "--face-reference",
                 str(tmp_path / "astronaut.png"), *fast_args]) == 0
    largest, by_photo = followed
    assert largest > 160  # Tom Hanks, the largest face, on the right half
    assert by_photo < 130  # the astronaut, on the left
    assert load_motion(tmp_path / "b.npz").metadata["face_reference"] == "astronaut.png"



@pytest.mark.parametrize("index", ["0", "1"])
def test_face_index_and_face_reference_together_are_refused(index, media, tmp_path, capsys):
    """Both options name the face to follow; even ``--face-index 0`` (the default, given) with a photo is refused."""
    out = tmp_path / "o.mp4"
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--face-index", index,
                 "--face-reference", str(media["photo"])])
    assert code == 1 and capsys.readouterr().err == "retarget: error: use either --face-index or --face-reference\n"
    assert not out.exists()

def test_run_time_range_and_edit_side_by_side(media, fast_args, tmp_path, rendered):
    out = tmp_path / "range.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--start", "0.1",
                 "--end", "0.3", *fast_args]) == 0
    info, source = probe_video(out), probe_video(media["clip"])
    assert info.frame_count == 6 and info.frame_rate == RATE  # frames 3..8: 0.1001 s <= t < 0.3 s
    assert abs(info.audio.duration - 6 * 1001 / 30000) < 0.03  # audio cut to the range (AAC frame granularity)
    assert info.audio.duration < source.audio.duration / 1.5

    sbs = tmp_path / "sbs.mp4"
    assert main(["edit", str(media["clip"]), "--expression", str(media["photo"]), "-o", str(sbs),
                 "--side-by-side", *fast_args]) == 0
    info = probe_video(sbs)
    assert (info.width, info.height) == (320, 120) and info.frame_count == FRAMES
    from retarget.video.reader import VideoReader

    frames = np.stack([f for f, _, _ in VideoReader(sbs).iter_frames()]).astype(int)
    originals = np.stack([f for f, _, _ in VideoReader(media["clip"]).iter_frames()]).astype(int)
    assert np.abs(frames[:, :, :160] - originals).mean() < 3  # left: the original
    edited = [k for k in range(FRAMES) if k not in BLANK]
    assert np.abs(frames[edited, :, 160:] - originals[edited]).mean() > 2  # right: the result


def test_compile_and_vae_fp32_reach_the_pipeline(media, fast_args, tmp_path, monkeypatch):
    from retarget.pipeline import ExpressionPipeline

    called, modes = [], []
    monkeypatch.setattr(ExpressionPipeline, "compile",
                        lambda self, **kw: (called.append("compile"), modes.append(kw.get("mode"))))
    original_upcast = ExpressionPipeline.upcast_vae
    monkeypatch.setattr(ExpressionPipeline, "upcast_vae",
                        lambda self: (called.append("upcast_vae"), original_upcast(self))[1])
    out = tmp_path / "switches.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--compile",
                 "--vae-fp32", *fast_args]) == 0
    assert sorted(called) == ["compile", "upcast_vae"] and modes == [None]  # inductor's default mode
    assert probe_video(out).frame_count == FRAMES
    # --compile-mode picks the mode and implies --compile; it does not change the render key (timing only)
    moded = tmp_path / "moded.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(moded),
                 "--compile-mode", "reduce-overhead", *fast_args]) == 0
    assert modes == [None, "reduce-overhead"]
    from retarget.jobs.options import COMPILE_MODES, JobOptions

    plain, tuned = JobOptions(models=tmp_path), JobOptions(models=tmp_path, compile=True, compile_mode="max-autotune")
    assert "compile_mode" not in plain.render_key() and plain.render_key() == tuned.render_key()
    for mode in COMPILE_MODES:  # the command line offers every mode the options accept
        argv = ["run", "in.mp4", "--identity", "p.jpg", "-o", "o.mp4", "--compile-mode", mode]
        args = build_parser().parse_args(argv)
        assert args.compile_mode == mode
    with pytest.raises(InputError, match="--compile-mode must be one of"):
        JobOptions(models=tmp_path, compile_mode="fastest")


def test_edit_color_match_reaches_paste_back(media, fast_args, tmp_path, monkeypatch):
    import retarget.jobs.edit as edit_module
    from retarget.video.reader import VideoReader

    seen = []
    original = edit_module.paste_back

    def recording(*args, **kwargs):
        seen.append(kwargs.get("color_match"))
        return original(*args, **kwargs)

    monkeypatch.setattr(edit_module, "paste_back", recording)
    plain, matched = tmp_path / "plain.mp4", tmp_path / "matched.mp4"
    base = ["edit", str(media["clip"]), "--expression", str(media["photo"]), "--crf", "0", *fast_args]
    assert main([*base, "-o", str(plain)]) == 0
    assert set(seen) == {False}
    seen.clear()
    assert main([*base, "-o", str(matched), "--color-match"]) == 0
    assert set(seen) == {True} and len(seen) == FRAMES - len(BLANK)
    a = np.stack([f for f, _, _ in VideoReader(plain).iter_frames()]).astype(int)
    b = np.stack([f for f, _, _ in VideoReader(matched).iter_frames()]).astype(int)
    edited = [k for k in range(FRAMES) if k not in BLANK]
    assert np.abs(a[edited] - b[edited]).mean() > 0.05  # colour matching changes the pasted faces
    assert np.array_equal(a[list(BLANK)], b[list(BLANK)])  # frames without a face are untouched either way


@pytest.mark.parametrize("option, value, message", [
    ("--reference-scale", "nan", "--reference-scale must be a finite number, got nan"),
    ("--expression-scale", "inf", "--expression-scale must be a finite number, got inf"),
    ("--expression-gain", "nan", "--expression-gain must be a finite number, got nan"),
    ("--jaw-gain", "-inf", "--jaw-gain must be a finite number, got -inf"),
    ("--guidance", "nan", "--guidance must be a finite number, got nan"),
    ("--memory-budget", "inf", "--memory-budget must be a finite number, got inf"),
    ("--seed", "99999999999999999999", "--seed must be from 0 to 1099511627775, got 99999999999999999999"),
    ("--seed", "-1", "--seed must be from 0 to 1099511627775, got -1"),
    ("--start", "nan", "--start must be a finite number of seconds, got nan"),
    ("--end", "inf", "--end must be a finite number of seconds, got inf"),
])
def test_numbers_that_are_not_finite_or_out_of_range_stop_before_any_work(option, value, message, media, fast_args,
                                                                          tmp_path, capsys, caplog):
    """NaN and infinite scales used to render black frames with exit 0, and a huge seed failed after the scan."""
    out = tmp_path / "out.mp4"
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), *fast_args,
                 f"{option}={value}"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines() == [f"retarget: error: {message}"]
    assert list(tmp_path.iterdir()) == []
    assert not any("face detector" in record.getMessage() for record in caplog.records)  # no model was loaded


def test_options_a_command_does_not_use_are_named(media, fast_args, tmp_path, capsys):
    """extract takes the rendering options (one option set serves every command) and says which of those given do
    nothing; the motion file is the same as without them."""
    plain, noted = tmp_path / "plain.npz", tmp_path / "noted.npz"
    skip = {i for i, a in enumerate(fast_args) if a in ("--steps", "--guidance", "--base-model")}
    base = [a for i, a in enumerate(fast_args) if i not in skip and i - 1 not in skip]  # the options and values
    assert main(["extract", str(media["clip"]), "-o", str(plain), *base]) == 0
    assert "do nothing here" not in capsys.readouterr().err
    assert main(["extract", str(media["clip"]), "-o", str(noted), *base, "--steps", "4", "--codec", "libx265",
                 "--smooth", "savgol", "--seed", "0"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == \
        "retarget extract: --steps, --smooth, --codec do nothing here (rendering options of run, edit and batch)"
    a, b = load_motion(plain), load_motion(noted)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.valid, b.valid)
    parser = build_parser()
    from retarget.cli import _note_unused_options

    _note_unused_options(parser.parse_args(["run", "v.mp4", "--identity", "p.jpg", "-o", "o.mp4", "--color-match"]))
    assert capsys.readouterr().err == \
        "retarget run: --color-match does nothing here (an option of edit and of run --paste-back)\n"
