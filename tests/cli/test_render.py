"""``run`` and ``edit`` end to end on the tiny weights: frame count, exact rate, audio, resume, pass-through."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from retarget.cli import main
from retarget.jobs.session import RenderSession
from retarget.video.probe import probe_video
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender
from tests.cli.conftest import BLANK, FRAMES, RATE


def decode_all(path):
    return np.stack([frame for frame, _, _ in VideoReader(path).iter_frames()])


def test_run_keeps_count_rate_and_audio(media, fast_args, tmp_path):
    out = tmp_path / "out.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), *fast_args]) == 0
    source, result = probe_video(media["clip"]), probe_video(out)
    assert result.frame_count == FRAMES
    assert result.frame_rate == RATE == Fraction(30000, 1001)
    assert (result.width, result.height) == (32, 32)  # the tiny model's output side
    assert result.audio is not None and result.audio.codec == "aac"
    assert abs(result.audio.duration - source.audio.duration) < 0.001  # copied packet for packet
    assert abs(result.duration - source.duration) < 1e-6
    assert not (tmp_path / "out.mp4.retarget-work").exists()
    frames = decode_all(out)
    # same noise for every frame and expressions that change: frames differ, but not wildly
    assert frames.std() > 1.0


def test_run_resumes_after_a_crash(media, fast_args, tmp_path, monkeypatch):
    out = tmp_path / "resumed.mp4"
    argv = ["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--side-by-side",
            *fast_args]
    original_save = ChunkedRender.save_chunk
    saved = []

    def crash_after_two(self, index, frames, **options):
        if len(saved) == 2:
            raise RuntimeError("simulated crash")
        saved.append(index)
        original_save(self, index, frames, **options)

    monkeypatch.setattr(ChunkedRender, "save_chunk", crash_after_two)
    assert main(argv) == 1
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "resumed.mp4.retarget-work").glob("chunk_*")) == [
        "chunk_000000.mp4", "chunk_000001.mp4"]

    monkeypatch.setattr(ChunkedRender, "save_chunk", original_save)
    rendered = []
    original_render = RenderSession.render

    def counting_render(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        rendered.extend(int(i) for i in frame_indices)
        return original_render(self, id_embeds, expressions, frame_indices, reference, desc, times=times)

    monkeypatch.setattr(RenderSession, "render", counting_render)
    assert main(argv) == 0
    assert rendered == list(range(8, FRAMES))  # chunks 0 and 1 (frames 0-7) were not rendered again
    info = probe_video(out)
    assert info.frame_count == FRAMES and info.frame_rate == RATE
    # driving 160x120 scaled to 32 rows (43 wide), then the 32x32 result; 75 is padded to 76 for yuv420p
    assert (info.width, info.height) == (76, 32)


def test_edit_pastes_back_and_passes_frames_through(media, fast_args, tmp_path):
    out = tmp_path / "edited.mp4"
    argv = ["edit", str(media["clip"]), "--expression", str(media["photo"]), "-o", str(out), "--crf", "0",
            "--start", "0.1", "--no-watermark", *fast_args]  # the watermark would change the untouched frames
    assert main(argv) == 0
    source, result = probe_video(media["clip"]), probe_video(out)
    assert result.frame_count == FRAMES and result.frame_rate == RATE
    assert (result.width, result.height) == (160, 120)
    assert abs(result.audio.duration - source.audio.duration) < 0.001
    before, after = decode_all(media["clip"]).astype(int), decode_all(out).astype(int)
    change = np.abs(after - before).mean(axis=(1, 2, 3))
    untouched = [0, 1, 2, *BLANK]  # before --start (0.1 s = frame 3) and frames without a face
    assert change[untouched].max() < 1.5  # only the lossless re-encode's colour rounding
    edited = [k for k in range(FRAMES) if k not in untouched]
    assert change[edited].min() > 2.0  # a new face was pasted in


def test_extract_plot_and_edit_with_motion(media, fast_args, tmp_path):
    from retarget.motion.motion_file import load_motion

    motion = tmp_path / "motion.npz"
    assert main(["extract", str(media["clip"]), "-o", str(motion), *fast_args]) == 0
    track = load_motion(motion)
    assert track.values.shape == (FRAMES, 55) and track.rate == RATE
    assert list(np.flatnonzero(~track.valid)) == list(BLANK)
    assert np.allclose(np.diff(track.times), 1001 / 30000, atol=1e-4)
    assert np.all(track.values[track.valid, 50:52] >= 0) and np.all(track.values[track.valid, 50:52] <= 1)

    curves = tmp_path / "curves.png"
    assert main(["plot", str(motion), "-o", str(curves), "--channels", "exp00,eyelid0,54"]) == 0
    assert curves.stat().st_size > 1000

    out = tmp_path / "from_motion.mp4"
    assert main(["edit", str(media["clip"]), "--expression", str(motion), "-o", str(out), "--end", "0.2",
                 *fast_args]) == 0
    assert probe_video(out).frame_count == FRAMES


def test_out_of_device_memory_is_one_line_that_names_a_smaller_batch_and_resumes(media, fast_args, tmp_path,
                                                                                monkeypatch, capsys):
    """A diffusion batch that runs out of device memory stops the job with one line naming half the batch size;
    the chunks already finished stay, and the same command with that batch size resumes from them."""
    import torch

    from retarget.pipeline import ExpressionPipeline

    out = tmp_path / "oom.mp4"
    argv = ["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), *fast_args]
    original_call = ExpressionPipeline.__call__
    calls = []

    def short_of_memory(self, id_embeds, expressions, *args, **kwargs):
        calls.append(len(expressions))
        if len(calls) == 3:  # the third batch of 4 frames (chunk 2: frames 8-11)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 7.60 GiB\nOf the allocated memory ...")
        return original_call(self, id_embeds, expressions, *args, **kwargs)

    monkeypatch.setattr(ExpressionPipeline, "__call__", short_of_memory)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["retarget: error: cpu ran out of memory rendering a batch of 4 frame(s) (CUDA out of memory. "
                   "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.60 GiB); try --batch-size 2: chunks "
                   "already finished are kept and the same command resumes from them"]
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "oom.mp4.retarget-work").glob("chunk_*")) == [
        "chunk_000000.mp4", "chunk_000001.mp4"]

    calls.clear()
    smaller = [*argv[:argv.index("--batch-size") + 1], "2", *argv[argv.index("--batch-size") + 2:]]
    assert main(smaller) == 0
    assert calls == [2, 2]  # only chunk 2 (frames 8-11), in batches of 2
    assert probe_video(out).frame_count == FRAMES
