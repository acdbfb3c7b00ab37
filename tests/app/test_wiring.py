"""The app's events through gradio_client on the tiny model: the results equal the command line's for the same
job, the model stays loaded between jobs, and bad inputs give the command line's one-line message."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from tests.app.conftest import FAST
from tests.app.helpers import as_path, cli, model_args, video_frames
from tests.cli.conftest import BLANK
from tests.renders import assert_same_render

pytest.importorskip("gradio_client", reason="the app extra (gradio, gradio_client) is not installed")

from gradio_client import handle_file  # noqa: E402

from retarget.app.service import Controls  # noqa: E402
from retarget.app.ui import CONTROLS  # noqa: E402


def values(tab: str, **changes) -> list:
    """The settings of ``tab`` in event order: the CLI defaults, the fast sampling, then ``changes``."""
    controls = dataclasses.replace(Controls(**FAST), **changes)
    return [getattr(controls, name) for name in CONTROLS[tab]]


@pytest.fixture
def renders(monkeypatch):
    """Every :meth:`RenderSession.render` call of this process (the app's job thread included), in order, as
    ``(expressions, frame_indices, reference, faces)``."""
    from retarget.jobs.session import RenderSession

    calls, render = [], RenderSession.render

    def recorded(self, id_embeds, expressions, frame_indices, reference, desc="render", times=None):
        faces = render(self, id_embeds, expressions, frame_indices, reference, desc, times=times)
        calls.append((np.array(expressions), np.array(frame_indices), np.array(reference), faces.copy()))
        return faces

    monkeypatch.setattr(RenderSession, "render", recorded)
    return calls


def joined(calls) -> tuple[np.ndarray, ...]:
    """The recorded render calls of one job joined along the frames."""
    return tuple(np.concatenate([call[k] for call in calls]) for k in (0, 1, 3))


def test_retarget_equals_cli_and_keeps_the_model_warm(client, served_app, media, cli_models, tmp_path, capsys,
                                                      renders):
    service = served_app[1]
    first = client.predict(handle_file(str(media["clip"])), handle_file(str(media["photo"])),
                           *values("retarget", steps=1), api_name="/retarget")
    assert first[3] == "Done with 1 warning(s)."  # the clip's last two frames have no face
    assert "clip.mp4: no face in 2 of 12 frames (0.33-0.40 s)" in first[2]
    session = next(iter(service.sessions))
    pipeline = session.pipeline

    renders.clear()
    video, download, warnings, status = client.predict(
        handle_file(str(media["clip"])), handle_file(str(media["photo"])),
        *values("retarget", seed=3, expression_gain=1.5, end=0.3), api_name="/retarget")
    app_calls = list(renders)
    assert status == "Done." and warnings == ""  # the frames without a face are after --end
    assert list(service.sessions) == [session] and session.pipeline is pipeline  # loaded once, reused
    assert session.options.steps == 2 and session.options.seed == 3  # this job's settings, not the first one's

    frames, rate = video_frames(as_path(download))
    assert rate == Fraction(30000, 1001)
    assert frames.shape == (9, 32, 32, 3)  # frames with t < 0.3 s: 0..8
    assert as_path(video).name == as_path(download).name == "clip-retarget.mp4"

    reference = tmp_path / "cli.mp4"
    renders.clear()
    code, _ = cli(["run", media["clip"], "--identity", media["photo"], "-o", reference, *model_args(cli_models),
                   "--seed", "3", "--expression-gain", "1.5", "--end", "0.3"], capsys)
    assert code == 0
    expected, expected_rate = video_frames(reference)
    assert expected_rate == rate and expected.shape == frames.shape
    # The same job: the same reference face, frames and expressions (the gain applied), and the same faces. The
    # faces are compared before encoding, within one grey level: the CPU's float results of the same math may
    # differ in the last bits with the BLAS library's thread count and memory alignment, which can flip the
    # rounding of a few values, and the lossy encoder spreads any such flip over whole blocks of later frames.
    (app_values, app_frames, app_faces), (cli_values, cli_frames, cli_faces) = joined(app_calls), joined(renders)
    assert np.array_equal(app_calls[0][2], renders[0][2])
    np.testing.assert_array_equal(app_frames, np.arange(9))
    np.testing.assert_array_equal(cli_frames, app_frames)
    np.testing.assert_allclose(app_values, cli_values, rtol=0, atol=1e-5)
    assert_same_render(app_faces, cli_faces)


def test_retarget_pasted_into_the_photo(client, media):
    video, download, warnings, status = client.predict(
        handle_file(str(media["clip"])), handle_file(str(media["photo"])),
        *values("retarget", paste_back=True, color_match=True, end=0.2), api_name="/retarget")
    assert status == "Done."
    frames, _ = video_frames(as_path(download))
    assert frames.shape == (6, 300, 300, 3)  # the 300x300 identity photo, frames with t < 0.2 s


def test_edit_with_photo_side_by_side(client, media):
    video, download, warnings, status = client.predict(
        handle_file(str(media["clip"])), handle_file(str(media["photo"])),
        *values("edit", side_by_side=True, color_match=True), api_name="/edit")
    assert status == "Done with 1 warning(s)." and "those frames pass through unedited" in warnings
    frames, rate = video_frames(as_path(download))
    assert frames.shape == (12, 120, 320, 3) and rate == Fraction(30000, 1001)  # original | result
    change = np.abs(frames[:, :, :160].astype(int) - frames[:, :, 160:]).mean(axis=(1, 2, 3))
    assert all(change[k] < 1.0 for k in BLANK)  # frames without a face pass through (up to encoding)
    edited = [k for k in range(12) if k not in BLANK]
    assert change[edited].min() > 2 * change[list(BLANK)].max()  # the face was edited in the others


def test_iphone_heic_photo_as_identity(client, media, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (the heif extra) is not installed")
    from PIL import Image

    photo = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(Image.open(media["photo"]).convert("RGB")).save(photo, quality=95)
    video, download, warnings, status = client.predict(handle_file(str(media["clip"])), handle_file(str(photo)),
                                                       *values("retarget", end=0.3), api_name="/retarget")
    assert status == "Done." and warnings == ""
    frames, _ = video_frames(as_path(download))
    assert frames.shape == (9, 32, 32, 3)


def test_motion_equals_extract(client, media, cli_models, tmp_path, capsys):
    from retarget.motion.motion_file import load_motion

    curves, motion, warnings, status = client.predict(handle_file(str(media["clip"])), "exp00,jaw0",
                                                      *values("motion"), api_name="/motion")
    assert status == "Done with 1 warning(s)." and "the motion file marks them missing" in warnings
    track = load_motion(as_path(motion))
    reference = tmp_path / "cli.npz"
    code, _ = cli(["extract", media["clip"], "-o", reference, *model_args(cli_models)[:6], "--no-progress"], capsys)
    assert code == 0
    expected = load_motion(reference)
    np.testing.assert_array_equal(track.values, expected.values)
    np.testing.assert_array_equal(track.valid, expected.valid)
    assert len(track) == 12 and not track.valid[list(BLANK)].any()
    from PIL import Image

    with Image.open(as_path(curves)) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


@pytest.mark.parametrize("tab, source, flags", [
    ("retarget", "blank_photo", []),
    ("retarget", "not_an_image", []),  # a text file named .jpg: the job's one line, not the widget's failure
    ("edit", "junk_motion", []),
    ("retarget", "photo", ["--relative", "--neutral-frame", "40"]),
])
def test_bad_input_shows_the_cli_line(client, media, cli_models, tmp_path, capsys, tab, source, flags):
    changes = {"relative": True, "neutral_frame": "40"} if flags else {}
    media = dict(media, not_an_image=tmp_path / "notes.jpg")
    media["not_an_image"].write_text("not a photo")
    endpoint = "/retarget" if tab == "retarget" else "/edit"
    source_file = handle_file(str(media[source]))
    video, download, warnings, status = client.predict(handle_file(str(media["clip"])), source_file,
                                                       *values(tab, **changes), api_name=endpoint)
    assert video is None and download is None
    command = ["run", media["clip"], "--identity"] if tab == "retarget" else ["edit", media["clip"], "--expression"]
    code, line = cli([*command, media[source], "-o", tmp_path / "out.mp4", *model_args(cli_models), *flags], capsys)
    assert code == 1 and line.startswith("retarget: error: ")
    # The message names the file; the app's copy of the upload has another folder, so compare after the path.
    assert status.startswith("retarget: error: ")
    assert status.rsplit(": ", 1)[-1] == line.rsplit(": ", 1)[-1]
    assert not (tmp_path / "out.mp4").exists()


def test_bad_value_is_one_line(client, media):
    status = client.predict(handle_file(str(media["clip"])), handle_file(str(media["photo"])),
                            *values("retarget", neutral_frame="middle"), api_name="/retarget")[3]
    assert status == "retarget: error: --neutral-frame: expected a frame number or auto, got 'middle'"
    status = client.predict(handle_file(str(media["clip"])), handle_file(str(media["photo"])),
                            *values("retarget", face_index=1, face_reference=handle_file(str(media["photo"]))),
                            api_name="/retarget")[3]
    assert status == "retarget: error: use either --face-index or --face-reference"


def test_cancel_without_a_job(client):
    assert client.predict(api_name="/cancel") == "No job is running."


def test_uploads_are_limited(served_app, tmp_path):
    from gradio_client import Client

    demo = served_app[2]
    assert demo.max_file_size == 500 * 1024 * 1024  # MAX_UPLOAD, as the launched app enforces it
    demo.max_file_size, limit = 1000, demo.max_file_size
    try:
        big = tmp_path / "big.mp4"
        big.write_bytes(bytes(5000))
        with pytest.raises(Exception, match="413"):
            Client(served_app[0], verbose=False).predict(handle_file(str(big)), handle_file(str(big)),
                                                         *values("retarget"), api_name="/retarget")
    finally:
        demo.max_file_size = limit


def test_cancel_stops_the_running_job(client, served_app, media):
    import time

    service = served_app[1]
    job = client.submit(handle_file(str(media["clip"])), handle_file(str(media["photo"])),
                        *values("retarget", steps=50), api_name="/retarget")  # long enough to cancel inside
    deadline = time.monotonic() + 120
    while True:  # until the render has started (its frame bar has reported)
        control = service.running
        progress = control.progress if control is not None else None
        if progress is not None and progress.desc == "run clip.mp4":
            break
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.05)
    from gradio_client import Client

    other_page = Client(served_app[0], verbose=False)  # another browser session: its Cancel is not for this job
    assert other_page.predict(api_name="/cancel") == ("No job of this page is running (the running job is another "
                                                      "page's).")
    assert service.running is control and not control.cancelled
    assert client.predict(api_name="/cancel") == "Cancelling..."
    video, download, warnings, status = job.result(timeout=120)
    assert status == "Cancelled at 0 of 12 frames (run clip.mp4)."  # one chunk of 12: stopped inside it
    assert video is None and download is None
    assert service.running is None
