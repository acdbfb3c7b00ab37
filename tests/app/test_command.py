"""``retarget app`` on the command line: its options, and one line without the app extra."""

from __future__ import annotations

import sys

from retarget.cli import build_parser, main, options_from_args


def test_app_options_and_defaults():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share, args.models, args.base_model) == ("127.0.0.1", 7860, False, None, None)
    args = build_parser().parse_args(["app", "--models", "m", "--base-model", "b", "--host", "0.0.0.0", "--port",
                                      "8000", "--share"])
    assert (args.models, args.base_model, args.host, args.port, args.share) == ("m", "b", "0.0.0.0", 8000, True)


def test_without_the_extra_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["app", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err == ('retarget: error: the app needs the "app" extra: pip install "retarget[app]" '
                   '(or pip install -e ".[app]")\n')


def test_page_defaults_are_the_command_lines():
    from retarget.app.service import Controls

    args = build_parser().parse_args(["run", "clip.mp4", "--identity", "p.jpg", "-o", "o.mp4"])
    page = Controls()
    for name in ("steps", "guidance", "expression_scale", "reference_scale", "seed", "smooth", "relative",
                 "expression_gain", "eyelid_gain", "jaw_gain", "side_by_side", "color_match", "paste_back"):
        assert getattr(page, name) == getattr(args, name), name
    assert args.face_index is None and page.face_index == options_from_args(args).face_index == 0  # None: not given
    assert page.reference == (not args.no_reference) and page.neutral_frame == "auto" and args.neutral_frame is None
    assert (page.start, page.end, page.face_reference) == (args.start, args.end, args.face_reference)


def test_the_app_lets_pillow_open_heic_uploads(monkeypatch, tmp_path):
    """Gradio's photo widgets open each upload with Pillow, so the app registers pillow-heif when it is created."""
    import pytest

    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from retarget.app import create_app
    from retarget.faces import image_io

    calls = []
    monkeypatch.setattr(image_io, "enable_heif", lambda: calls.append(True) or True)
    blocks, service = create_app(tmp_path, device="cpu")
    service.close()
    assert calls == [True]


def test_the_time_range_fields_are_text_read_as_the_command_line_reads_seconds():
    import pytest

    from retarget.app.service import Controls, time_range
    from retarget.errors import InputError

    assert time_range(Controls()) == (None, None)
    assert time_range(Controls(start="", end=" ")) == (None, None)  # empty fields: the whole clip
    assert time_range(Controls(start=" 0.5 ", end="2")) == (0.5, 2.0)
    assert time_range(Controls(start=0.25, end=None)) == (0.25, None)
    with pytest.raises(InputError, match="--end must be a number, got 'soon'"):
        time_range(Controls(end="soon"))


def test_the_app_keeps_gradios_files_in_its_own_folder_and_removes_it(monkeypatch, tmp_path):
    """Gradio copies every upload and result into GRADIO_TEMP_DIR (default /tmp/gradio, kept for good): the app
    points it at a folder of its own for the time it serves, and removes it with the job folders."""
    import os
    from pathlib import Path

    import pytest

    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    import retarget.app as app

    seen = []

    class Page:
        def launch(self, **options):
            folder = Path(os.environ["GRADIO_TEMP_DIR"])
            (folder / "upload.mp4").write_bytes(b"a user's clip")
            seen.append(folder)

    class Service:
        def close(self):
            seen.append("closed")

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(app, "create_app", lambda *args: (Page(), Service()))
    app.launch()
    assert seen[1] == "closed" and seen[0].name.startswith("retarget-app-files-") and not seen[0].exists()
    assert "GRADIO_TEMP_DIR" not in os.environ
    mine = tmp_path / "gradio-files"  # set by the user: used and left alone
    mine.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(mine))
    app.launch()
    assert seen[2] == mine and (mine / "upload.mp4").is_file()
