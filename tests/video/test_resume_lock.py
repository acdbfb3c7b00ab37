"""The work folder of a render is locked: a second process fails at once and leaves the first one's chunks alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retarget.errors import InputError
from retarget.video import ChunkedRender, EncoderSettings
from retarget.video.work_lock import LOCK_NAME

FAST = EncoderSettings(preset="ultrafast")
ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
import numpy as np
from retarget.video import ChunkedRender, EncoderSettings
job = ChunkedRender(sys.argv[1], {"k": 1}, 20, 10, 25, settings=EncoderSettings(preset="ultrafast"))
job.save_chunk(0, np.full((10, 64, 96, 3), 77, np.uint8))
print("ready", flush=True)
sys.stdin.read()  # hold the render (and its lock) until killed
"""


def frames(value: int) -> np.ndarray:
    return np.full((10, 64, 96, 3), value, np.uint8)


def test_second_process_fails_at_once_and_keeps_the_first_ones_chunks(tmp_path):
    out = tmp_path / "out.mp4"
    work = tmp_path / "out.mp4.retarget-work"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        chunk = work / "chunk_000000.mp4"
        before = chunk.read_bytes()
        # the same job, and a different one (which would otherwise discard the chunks): both refused at once
        for key in ({"k": 1}, {"k": 2}):
            with pytest.raises(InputError) as error:
                ChunkedRender(out, key, 20, 10, 25, settings=FAST)
            message = str(error.value)
            assert message.startswith(f"{out}: another process (process {holder.pid}) is rendering this output")
            assert "\n" not in message
        assert chunk.read_bytes() == before and (work / "manifest.json").is_file()
    finally:
        holder.kill()  # the lock goes with the process, however it ends
        holder.wait(timeout=30)
    job = ChunkedRender(out, {"k": 1}, 20, 10, 25, settings=FAST)
    assert [s.index for s in job.pending_chunks()] == [1]  # the holder's chunk is reused
    job.save_chunk(1, frames(5))
    job.finalize(progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_lock_is_released_on_finalize_close_and_with(tmp_path):
    out = tmp_path / "out.mp4"
    work = tmp_path / "out.mp4.retarget-work"
    job = ChunkedRender(out, {"k": 1}, 10, 10, 25, settings=FAST)
    assert (work / LOCK_NAME).read_text().strip() == str(os.getpid())
    job.close()
    assert not work.exists()  # nothing was saved: no empty work folder left behind

    with ChunkedRender(out, {"k": 1}, 20, 10, 25, settings=FAST) as job:
        job.save_chunk(0, frames(1))
    assert sorted(p.name for p in work.iterdir()) == ["chunk_000000.mp4", "manifest.json"]  # kept for a resume

    job = ChunkedRender(out, {"k": 1}, 20, 10, 25, settings=FAST)
    job.save_chunk(1, frames(2))
    job.finalize(progress=False)
    assert not work.exists() and out.is_file()

    # released: another process can take it now
    check = ("import sys; from retarget.video import ChunkedRender; "
             "ChunkedRender(sys.argv[1], {'k': 3}, 10, 10, 25).close(); print('locked')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", check, str(out)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "locked", result.stderr
    assert not work.exists()


def test_a_file_where_the_work_folder_goes_is_named(tmp_path):
    blocker = tmp_path / "out.mp4.retarget-work"
    blocker.write_text("someone's notes")
    with pytest.raises(InputError, match=r"out\.mp4: .*out\.mp4\.retarget-work is a file, where this output's work "
                                         r"folder \(its finished chunks, for a resume\) goes; move or remove it"):
        ChunkedRender(tmp_path / "out.mp4", {"job": 1}, 4, 2, 25, settings=EncoderSettings(preset="ultrafast"))
    assert blocker.read_text() == "someone's notes"
