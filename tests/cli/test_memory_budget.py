"""Host memory by bytes: the chunk length adapts to the picture size so a chunk's frames, with every copy a job
makes of them, plus a reserve for the work on single frames, fit ``memory_budget`` GiB (``--chunk-size`` stays the
upper bound).

The planner's arithmetic is checked against sizes worked out by hand; an ``edit --side-by-side`` run under a tiny
budget is checked by its peak of traced allocations (numpy's frame buffers are traced by ``tracemalloc``; the
models' tensors are not, and are loaded before tracing starts)."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import pytest

from retarget.errors import InputError
from retarget.jobs import edit as edit_module
from retarget.jobs.common import (MEMORY_BUDGET_GIB, WORKING_PICTURES, chunk_frames, edit_frame_bytes,
                                  keep_scanned_frames, picture_bytes, run_frame_bytes)
from retarget.jobs.edit import edit_job, read_expression_source
from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession
from retarget.jobs.stages import CHUNKS_IN_FLIGHT
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.encoding import EncoderSettings
from retarget.video.reader import VideoReader
from retarget.video.resume import ChunkedRender

GIB = 1024**3
UHD = 3840 * 2160 * 3  # bytes of one 3840x2160 RGB picture
FACE = 512 * 512 * 3
COUNT = 16


def test_frame_bytes_count_every_copy():
    assert picture_bytes(3840, 2160) == UHD
    # edit: the frame; with side-by-side also the original and the composite twice as wide; plus crop and face.
    assert edit_frame_bytes(3840, 2160, 512, False) == UHD + 2 * FACE
    assert edit_frame_bytes(3840, 2160, 512, True) == 4 * UHD + 2 * FACE
    # run: the face; with side-by-side the driving frame and the composite (910x512 driving panel, then the face).
    assert run_frame_bytes(3840, 2160, 512, False) == FACE
    assert run_frame_bytes(3840, 2160, 512, True) == FACE + UHD + (910 * 512 * 3 + FACE)
    # run --paste-back: also the 1920x1440 photo with the face; side by side, the panels at 720 rows
    pasted = 1920 * 1440 * 3
    assert run_frame_bytes(3840, 2160, 512, False, (1920, 1440)) == FACE + pasted
    assert run_frame_bytes(3840, 2160, 512, True, (1920, 1440), 720) == FACE + pasted + UHD + (1280 + 960) * 720 * 3


@pytest.mark.parametrize("width, height, side_by_side, expected", [
    (3840, 2160, True, 12),    # 4K edit --side-by-side: 96.4 MiB per frame after 854 MiB of working memory
    (3840, 2160, False, 47),   # 4K edit: 25.2 MiB per frame
    (7680, 4320, True, 1),     # 8K: the working memory alone exceeds 2 GiB; one frame at a time
    (1920, 1080, True, 64),    # HD: --chunk-size caps
])
def test_chunk_length_fits_the_default_budget(width, height, side_by_side, expected):
    per_frame = edit_frame_bytes(width, height, 512, side_by_side)
    budget = MEMORY_BUDGET_GIB * GIB - WORKING_PICTURES * picture_bytes(width, height)
    frames = chunk_frames(per_frame, 64, MEMORY_BUDGET_GIB, picture_bytes(width, height))
    assert frames == expected
    assert frames == 1 or frames * per_frame <= budget
    assert frames == 64 or (frames + 1) * per_frame > budget


def test_chunk_length_bounds():
    assert chunk_frames(UHD, 8, 100.0) == 8  # --chunk-size is the upper bound
    assert chunk_frames(UHD, 64, 0.001) == 1  # a frame larger than the budget is still processed, alone
    assert chunk_frames(10 * 2**20, 64, 0.05) == 5  # 51.2 MiB / 10 MiB
    assert chunk_frames(10 * 2**20, 64, 0.1, 2**20) == 6  # 102.4 MiB less 36 pictures of 1 MiB: 66.4 MiB


def test_chunks_in_flight_and_kept_frames_share_the_budget():
    picture = picture_bytes(3840, 2160)
    per_frame = edit_frame_bytes(3840, 2160, 512, True)
    free = MEMORY_BUDGET_GIB * GIB - WORKING_PICTURES * picture
    assert chunk_frames(per_frame, 64, MEMORY_BUDGET_GIB, picture, in_flight=3) == free // (3 * per_frame) == 4
    # Decode once: the scan's frames are kept when they take at most half of what the working memory leaves.
    assert keep_scanned_frames(25, 3840, 2160, MEMORY_BUDGET_GIB)  # 25 x 23.7 MiB <= 625 MiB
    assert not keep_scanned_frames(27, 3840, 2160, MEMORY_BUDGET_GIB)
    kept = 25 * picture
    assert chunk_frames(per_frame, 64, MEMORY_BUDGET_GIB, picture, in_flight=3, reserved=kept) == \
        (free - kept) // (3 * per_frame) == 2
    assert keep_scanned_frames(64, 1920, 1080, MEMORY_BUDGET_GIB)


def test_budget_must_be_positive():
    with pytest.raises(InputError, match="--memory-budget must be > 0"):
        JobOptions(memory_budget=0)


def chunk_lengths(module, monkeypatch) -> list[int]:
    """The chunk length of every render the job ``module`` (run or edit) starts from now on, in order."""
    lengths = []

    class Recording(ChunkedRender):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            lengths.append(self.chunk_size)

    monkeypatch.setattr(module, "ChunkedRender", Recording)
    return lengths


def edit_peak(clip, photo, options, session, tmp_path, name, monkeypatch):
    """(effective chunk length, peak traced bytes) of ``edit --side-by-side`` with ``session``'s models loaded
    before tracing."""
    session.options = options
    source = read_expression_source(photo, session)
    lengths = chunk_lengths(edit_module, monkeypatch)
    tracemalloc.start()
    try:
        output = edit_job(clip, photo, tmp_path / f"{name}.mp4", options, side_by_side=True, session=session,
                          source=source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert VideoReader(output).info.frame_count == COUNT
    return lengths[0], peak


def test_edit_side_by_side_peak_stays_within_the_budget(cli_models, media, tmp_path, monkeypatch):
    models, base = cli_models
    width, height = 320, 240
    clip = write_clip(tmp_path / "clip.mp4", moving_face_frames(COUNT, width=width, height=height), Fraction(25),
                      audio=False)
    picture = picture_bytes(width, height)
    common = dict(models=models, base_model=base, steps=1, guidance=1.0, batch_size=8, device="cpu",
                  progress=False, encoder=EncoderSettings(preset="ultrafast"))
    # Budget for chunks of two frames of edit --side-by-side on the tiny model (64 x 64 faces), as many chunks as
    # the overlapped stages hold at once, and the working memory.
    budget_bytes = 2 * CHUNKS_IN_FLIGHT * edit_frame_bytes(width, height, 64, True) + WORKING_PICTURES * picture
    assert not keep_scanned_frames(COUNT, width, height, budget_bytes / GIB)  # too small to keep the scan's frames
    small = JobOptions(**common, memory_budget=budget_bytes / GIB)
    session = RenderSession(small)
    session.pipeline, session.faces.detector, session.faces.identity, session.faces.expressions  # load now
    chunk, peak = edit_peak(clip, media["photo"], small, session, tmp_path, "small", monkeypatch)
    whole, whole_peak = edit_peak(clip, media["photo"], JobOptions(**common), session, tmp_path, "whole",
                                  monkeypatch)
    print(f"picture {picture / 2**20:.2f} MiB; budget {budget_bytes / 2**20:.1f} MiB: chunk {chunk}, peak "
          f"{peak / 2**20:.1f} MiB; default budget: chunk {whole}, peak {whole_peak / 2**20:.1f} MiB")
    assert chunk == 2 and whole >= COUNT  # the default: the whole clip in one chunk (its frames kept from the scan)
    # The traced allocations (numpy's frame buffers and Python objects) stay within the budget.
    assert peak <= budget_bytes
    # The whole clip in one chunk holds four pictures per frame, as counted.
    assert whole_peak >= 4 * COUNT * picture and whole_peak > budget_bytes


@pytest.mark.parametrize("paste_back, budget, expected", [
    (False, 0.0022, 31),  # 160x120 clip: 36 pictures of 57600 B reserved, 3 chunks of 32x32 faces in flight
    (True, 0.012, 3),     # pasted into the 300x300 photo: 36 of its pictures reserved, the photo per frame too
])
def test_run_chunks_count_what_a_run_holds(paste_back, budget, expected, media, fast_args, tmp_path, monkeypatch):
    """The job passes the planner what it holds: the face alone without --paste-back (as earlier versions, so their
    interrupted renders resume), and the pasted photo with it."""
    from retarget.cli import main
    from retarget.jobs import run as run_module

    lengths = chunk_lengths(run_module, monkeypatch)
    argv = ["run", media["clip"], "--identity", media["photo"], "-o", tmp_path / "out.mp4", *fast_args,
            "--chunk-size", "64", "--memory-budget", str(budget)] + ["--paste-back"] * paste_back
    assert main([str(a) for a in argv]) == 0
    face, clip, photo = picture_bytes(32, 32), picture_bytes(160, 120), picture_bytes(300, 300)
    frame = face + (photo if paste_back else 0)
    reserve = WORKING_PICTURES * (photo if paste_back else clip)
    assert lengths == [expected] == [(int(budget * GIB) - reserve) // (CHUNKS_IN_FLIGHT * frame)]
