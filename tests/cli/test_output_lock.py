"""run and edit lock the output's work folder before the face scan: a second process writing the same output stops
at once, without scanning; a job that fails before its first chunk leaves no work folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retarget.cli import main
from retarget.jobs import edit as edit_module
from retarget.jobs import run as run_module

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from retarget.video.resume import output_lock
lock = output_lock(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()  # hold the lock until killed
"""


@pytest.mark.parametrize("command", ["run", "edit"])
def test_a_locked_output_stops_the_job_before_the_face_scan(command, tmp_path, media, fast_args, monkeypatch,
                                                             capsys):
    out = tmp_path / "out.mp4"
    scans = []
    for module in (run_module, edit_module):
        monkeypatch.setattr(module, "scan_clip", lambda *a, **k: scans.append(1))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        source = ["--identity", str(media["photo"])] if command == "run" else ["--expression", str(media["photo"])]
        code = main([command, str(media["clip"]), *source, "-o", str(out), *fast_args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and scans == []
        assert err[-1] == (f"retarget: error: {out}: another process (process {holder.pid}) is rendering this "
                           f"output (its work folder {out}.retarget-work is locked)")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert not out.exists()


def test_a_job_that_fails_in_the_scan_leaves_no_work_folder(tmp_path, media, fast_args, capsys):
    out = tmp_path / "out.mp4"
    code = main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--face-index", "3",
                 *fast_args])
    assert code != 0 and "no frame shows face number 4" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
