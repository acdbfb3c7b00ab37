"""Paths the user gets wrong: an output folder that takes no new files, a folder or a device where a video or an
image is expected. Each is one plain line naming the user's path (no internal work-folder or temporary-file
name, no raw OS text), found before any work (no model loads, no clip is scanned), and nothing is left behind."""

from __future__ import annotations

import errno
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from retarget.cli import build_parser, main
from retarget.errors import InputError
from retarget.faces.image_io import load_image
from retarget.jobs.common import check_output
from retarget.motion import MotionTrack, save_motion
from retarget.provenance.verify import verify_file
from retarget.video.probe import probe_video


def _takes_no_files(folder: str) -> bool:
    """Whether ``folder`` exists and creating a file in it fails with ENOENT (Linux /proc), even as root."""
    if not os.path.isdir(folder):
        return False
    try:
        os.close(os.open(os.path.join(folder, ".retarget-test-probe"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    os.unlink(os.path.join(folder, ".retarget-test-probe"))
    return False


needs_proc = pytest.mark.skipif(not _takes_no_files("/proc"), reason="needs Linux /proc (a folder without new files)")


def one_error_line(code: int, err: str) -> str:
    """The single ``retarget: error:`` line of a failed command (asserts exit status 1 and one stderr line)."""
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("retarget: error: "), err
    assert "Traceback" not in err
    return lines[0]


def fail_if_called(what: str):
    def called(*args, **kwargs):
        raise AssertionError(f"{what} ran before the output was checked")
    return called


def small_motion(path: Path) -> Path:
    values = np.random.default_rng(0).normal(0, 0.3, (6, 55)).astype(np.float32)
    return save_motion(MotionTrack.constant_rate(values, np.ones(6, bool), Fraction(25)), path)


# --- an output folder that takes no new files -------------------------------------------------------------------

@needs_proc
@pytest.mark.parametrize("command", ["run", "edit"])
def test_render_to_an_unwritable_folder_fails_before_any_work(command, media, tmp_path, monkeypatch, capsys):
    import retarget.jobs.edit
    import retarget.jobs.run

    monkeypatch.setattr(retarget.jobs.run, "_scan_run", fail_if_called("the scan (models, photo, clip)"))
    monkeypatch.setattr(retarget.jobs.edit, "_scan_edit", fail_if_called("the scan (models, photo, clip)"))
    target = ["--identity" if command == "run" else "--expression", str(media["photo"])]
    code = main([command, str(media["clip"]), *target, "-o", "/proc/x.mp4", "--models", str(tmp_path / "none"),
                 "--device", "cpu", "--no-progress"])
    assert one_error_line(code, capsys.readouterr().err) == (
        "retarget: error: /proc/x.mp4: cannot write to /proc (it does not take new files)")
    assert list(tmp_path.iterdir()) == []


@needs_proc
def test_extract_to_an_unwritable_folder_fails_before_reading_the_clip(media, tmp_path, monkeypatch, capsys):
    import retarget.jobs.extract

    monkeypatch.setattr(retarget.jobs.extract, "VideoReader", fail_if_called("reading the clip"))
    monkeypatch.setattr(retarget.jobs.extract, "FaceModels", fail_if_called("loading the face models"))
    code = main(["extract", str(media["clip"]), "-o", "/proc/m.npz", "--models", str(tmp_path / "none"),
                 "--device", "cpu", "--no-progress"])
    assert one_error_line(code, capsys.readouterr().err) == (
        "retarget: error: /proc/m.npz: cannot write to /proc (it does not take new files)")
    assert list(tmp_path.iterdir()) == []


@needs_proc
def test_plot_to_an_unwritable_folder_is_one_plain_line(tmp_path, capsys):
    motion = small_motion(tmp_path / "m.npz")
    code = main(["plot", str(motion), "-o", "/proc/c.png"])
    assert one_error_line(code, capsys.readouterr().err) == (
        "retarget: error: /proc/c.png: cannot write to /proc (it does not take new files)")
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


@pytest.mark.parametrize("code, reason", [(errno.EACCES, "permission denied"), (errno.EPERM, "permission denied"),
                                          (errno.EROFS, "read-only file system"),
                                          (errno.ENOSPC, "no space left on the device"),
                                          (errno.EIO, os.strerror(errno.EIO).lower())])
def test_the_reason_a_folder_takes_no_files_is_plain(code, reason, tmp_path, monkeypatch):
    """Permissions cannot be tested as root (root writes anywhere chmod allows nothing), so the file system's
    answer is simulated: whatever creating the probe file says becomes the reason, in plain words."""
    def refuse(path, flags, mode=0o777, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(os, "open", refuse)
        with pytest.raises(InputError) as caught:
            check_output(tmp_path / "out.mp4")
        with pytest.raises(InputError) as relative:
            check_output("out.mp4")  # the folder of a bare name is the working folder, named in full
    assert str(caught.value) == f"{tmp_path / 'out.mp4'}: cannot write to {tmp_path} ({reason})"
    assert str(relative.value) == f"out.mp4: cannot write to {tmp_path} ({reason})"


def test_a_writable_folder_passes_and_keeps_no_probe_file(tmp_path):
    assert check_output(tmp_path / "out.mp4") == tmp_path / "out.mp4"
    assert check_output(tmp_path / "m.npz", suffixes=(".npz",)) == tmp_path / "m.npz"
    assert list(tmp_path.iterdir()) == []


def test_an_output_inside_a_file_is_one_plain_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    motion = small_motion(tmp_path / "m.npz")
    code = main(["plot", str(motion), "-o", str(tmp_path / "notes.txt" / "c.png")])
    assert one_error_line(code, capsys.readouterr().err) == (
        f"retarget: error: {tmp_path / 'notes.txt' / 'c.png'}: cannot write to {tmp_path / 'notes.txt'} "
        "(it is a file, not a folder)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "notes.txt"]


# --- a folder or a device where a file is expected ---------------------------------------------------------------

def test_verify_a_folder_says_it_is_a_folder(tmp_path, capsys):
    code = main(["verify", str(tmp_path)])
    assert one_error_line(code, capsys.readouterr().err) == f"retarget: error: {tmp_path}: is a folder, not a video file"
    code = main(["verify", str(tmp_path / "absent.mp4")])
    assert one_error_line(code, capsys.readouterr().err) == f"retarget: error: {tmp_path / 'absent.mp4'}: no such file"


@pytest.mark.skipif(not os.path.exists(os.devnull) or sys.platform == "win32", reason="needs /dev/null")
def test_a_device_is_neither_a_video_nor_an_image():
    special = f"{os.devnull}: is a special file (device, pipe or socket), not a"
    with pytest.raises(InputError) as caught:
        verify_file(os.devnull)
    assert str(caught.value) == f"{special} video file"
    with pytest.raises(InputError) as caught:
        probe_video(os.devnull)
    assert str(caught.value) == f"{special} video file"
    with pytest.raises(InputError) as caught:
        load_image(os.devnull)
    assert str(caught.value) == f"{special}n image file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    pipe = tmp_path / "clip.mp4"
    os.mkfifo(pipe)
    with pytest.raises(InputError) as caught:
        probe_video(pipe)  # opening it for reading would block until something writes to it
    assert str(caught.value) == f"{pipe}: is a special file (device, pipe or socket), not a video file"


def test_image_folder_wording_matches_the_video_wording(tmp_path):
    with pytest.raises(InputError) as caught:
        load_image(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a folder, not an image file"
    with pytest.raises(InputError) as caught:
        probe_video(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a folder, not a video file"



@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_folder_given_for_a_file_is_named_as_a_folder(command, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read: the photo is checked first")
    folder = tmp_path / "photos"
    folder.mkdir()
    argv = (["run", str(clip), "--identity", str(folder), "-o", str(tmp_path / "out.mp4")] if command == "run" else
            ["eval", str(clip), "--driving", str(clip), "--identity", str(folder), "-o", str(tmp_path / "report")])
    code = main(argv)
    assert one_error_line(code, capsys.readouterr().err) == f"retarget: error: {folder}: is a folder, not a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "photos"]


def test_unreadable_files_name_the_path_once_without_an_errno(tmp_path, capsys):
    """An image or video FFmpeg/Pillow cannot read: ``PATH: not a readable ... (reason)``, the reason without the
    path again or PyAV's errno, in ``verify`` as in the jobs."""
    photo, clip = tmp_path / "notes.jpg", tmp_path / "notes.mp4"
    photo.write_text("not a picture")
    clip.write_text("not a video")
    with pytest.raises(InputError) as caught:
        load_image(photo)
    assert str(caught.value) == f"{photo}: not a readable image file (cannot identify image file)"
    code = main(["verify", str(clip)])
    line = one_error_line(code, capsys.readouterr().err)
    assert line == f"retarget: error: {clip}: not a readable video file (Invalid data found when processing input)"
    with pytest.raises(InputError) as caught:
        probe_video(clip)
    assert str(caught.value) == line.removeprefix("retarget: error: ")

# --- doctor --help ------------------------------------------------------------------------------------------------

def test_doctor_options_have_the_same_help_as_the_other_commands():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    options = {name: {a.dest: a.help for a in commands[name]._actions} for name in ("doctor", "run", "app")}
    assert all(options["doctor"].values()), options["doctor"]
    assert options["doctor"]["models"] == ("folder with the published files to check (default: $RETARGET_MODELS "
                                           "or ./models)")
    assert options["doctor"]["base_model"] == options["run"]["base_model"]
    assert options["run"]["models"] == options["app"]["models"] == (
        "folder with the published files (default: $RETARGET_MODELS or ./models)")


def test_an_error_while_writing_names_the_users_file_not_the_temporary_one(tmp_path):
    """A full disk while an atomic write is under way: the line names the target, not ``.NAME.partial-<hex>.EXT``."""
    import errno

    from retarget.cli import _error_line
    from retarget.video.atomic import partial_path, partial_target

    for target in (tmp_path / "out.mp4", tmp_path / "m.npz", tmp_path / "a.b.png", tmp_path / "noext"):
        temporary = partial_path(target)
        assert temporary.parent == target.parent and temporary.name != target.name
        assert partial_target(temporary) == target
        error = OSError(errno.ENOSPC, "No space left on device", str(temporary))
        assert _error_line(error) == f"{target}: No space left on device"
    assert partial_target(tmp_path / "out.mp4") is None and partial_target(tmp_path / ".x.partial-zz.mp4") is None
    other = OSError(errno.EACCES, "Permission denied", str(tmp_path / "in.mp4"))
    assert _error_line(other) == f"{tmp_path / 'in.mp4'}: Permission denied"


def test_an_empty_time_range_gives_both_ends_in_seconds():
    from retarget.jobs.common import _nonempty_range

    with pytest.raises(InputError, match=r"^clip\.mov: no frames between 100\.0 s and 200\.0 s$"):
        _nonempty_range("clip.mov", 5, 5, 100.0, 200.0)
    with pytest.raises(InputError, match=r"^clip\.mov: no frames between 7 s and the end$"):
        _nonempty_range("clip.mov", 5, 5, 7, None)
