"""The Gradio page of ``retarget app``: tabs Retarget, Edit and Motion over :class:`~retarget.app.service.AppService`.

Every job event shares one concurrency group of size 1 (one GPU job at a time; the others wait in Gradio's queue
with their place shown). The progress bar follows the job's frames; Cancel stops the running job at its next frame
batch. Uploads are limited to :data:`MAX_UPLOAD`; Gradio's copies of uploads and results are deleted after
:data:`CACHE_SECONDS`, and the app's job folders when the next job starts and when the app stops.
"""

from __future__ import annotations

import gradio as gr

from retarget.app.jobs import JobProgress
from retarget.app.service import AppService, Controls
from retarget.jobs.options import SMOOTHING_METHODS

MAX_UPLOAD = "500mb"
CACHE_SECONDS = 3600
JOB_GROUP = "retarget-job"

DEFAULTS = Controls()

#: Each tab's settings (:class:`~retarget.app.service.Controls` fields) in the order its job event takes them,
#: after the tab's files (Retarget: driving video, identity photo; Edit: video, expression source; Motion: video,
#: channels).
_SHARED = ("steps", "guidance", "seed", "expression_scale", "reference_scale")
_MOTION = ("smooth", "relative", "neutral_frame", "expression_gain", "eyelid_gain", "jaw_gain", "face_index",
           "face_reference", "start", "end", "side_by_side")
CONTROLS = {
    "retarget": _SHARED + ("reference",) + _MOTION + ("paste_back", "color_match"),
    "edit": _SHARED + _MOTION + ("color_match",),
    "motion": ("smooth", "face_index", "face_reference"),
}

INTRO = ("Put one person's facial performance onto another face. Results carry an invisible watermark and "
         "metadata that mark them as synthetic (`retarget verify`).")


def _controls(tab: str) -> dict[str, gr.components.Component]:
    """The settings of ``tab`` ("retarget", "edit" or "motion") by :class:`Controls` field name, with the CLI's
    defaults and help texts."""
    c: dict[str, gr.components.Component] = {}
    d = DEFAULTS
    if tab != "motion":
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                c["steps"] = gr.Slider(1, 100, value=d.steps, step=1, label="Steps", info="denoising steps")
                c["guidance"] = gr.Slider(0, 10, value=d.guidance, step=0.1, label="Guidance",
                                          info="classifier-free guidance")
                c["seed"] = gr.Number(value=d.seed, precision=0, label="Seed", info="noise seed")
            with gr.Row():
                c["expression_scale"] = gr.Slider(0, 2, value=d.expression_scale, step=0.05,
                                                  label="Expression scale", info="expression adapter weight")
                c["reference_scale"] = gr.Slider(0, 2, value=d.reference_scale, step=0.05, label="Reference scale",
                                                 info="reference adapter weight; lower = more expression, "
                                                      "less background/pose")
                if tab == "retarget":
                    c["reference"] = gr.Checkbox(value=d.reference, label="Reference adapter",
                                                 info="off = --no-reference (the photo gives only the identity)")
        with gr.Accordion("Motion", open=False):
            with gr.Row():
                c["smooth"] = gr.Dropdown(list(SMOOTHING_METHODS), value=d.smooth, label="Smoothing",
                                          info="of the expression track; kalman = zero-lag Kalman/RTS")
                c["relative"] = gr.Checkbox(value=d.relative, label="Relative",
                                            info="transfer the changes from the neutral frame onto the target's "
                                                 "own expression")
                c["neutral_frame"] = gr.Textbox(value=d.neutral_frame, label="Neutral frame",
                                                info="(relative) frame number, or auto = least expression")
            with gr.Row():
                c["expression_gain"] = gr.Slider(0, 3, value=d.expression_gain, step=0.05, label="Expression gain",
                                                 info="multiplier of the 50 expression values")
                c["eyelid_gain"] = gr.Slider(0, 3, value=d.eyelid_gain, step=0.05, label="Eyelid gain",
                                             info="multiplier of the 2 eyelid values")
                c["jaw_gain"] = gr.Slider(0, 3, value=d.jaw_gain, step=0.05, label="Jaw gain",
                                          info="multiplier of the 3 jaw values")
    with gr.Accordion("Faces and smoothing" if tab == "motion" else "Faces and time range", open=False):
        with gr.Row():
            if tab == "motion":
                c["smooth"] = gr.Dropdown(list(SMOOTHING_METHODS), value=d.smooth, label="Smoothing",
                                          info="of the plotted smoothed curves (the file keeps raw values)")
            c["face_index"] = gr.Number(value=d.face_index, precision=0, minimum=0, label="Face index",
                                        info="which face to follow: 0 = largest in the first frame with a face")
            # Files, not gr.Image: Gradio's image widget fails on an upload that is not an image before the job
            # could say so in the command line's one line
            c["face_reference"] = gr.File(label="Face to follow (photo, optional)", file_types=["image"], height=120)
        if tab != "motion":
            with gr.Row():
                # Text, not gr.Number: a number field shows 0 for "empty" once its section opens, and an end of 0
                # is no range at all
                c["start"] = gr.Textbox(value="", label="Start (s)", info="empty = from the beginning")
                c["end"] = gr.Textbox(value="", label="End (s)", info="empty = to the end")
                c["side_by_side"] = gr.Checkbox(value=d.side_by_side, label="Side by side",
                                                info="write input | result")
                if tab == "retarget":
                    c["paste_back"] = gr.Checkbox(value=d.paste_back, label="Paste into the photo",
                                                  info="the photo with the face pasted back (else the aligned face)")
                c["color_match"] = gr.Checkbox(value=d.color_match, label="Colour match",
                                               info="match the generated face's colours to the face it replaces"
                                                    + (" (with Paste into the photo)" if tab == "retarget" else ""))
    for name, component in c.items():
        component.elem_id = f"{tab}-{name.replace('_', '-')}"
    return {name: c[name] for name in CONTROLS[tab]}


def _image_or_none(path) -> str | None:
    """``path`` when it is an image file the jobs can read (for a preview), else None (the job then says why)."""
    from retarget.faces.image_io import load_image

    try:
        load_image(path) if path else None
    except Exception:  # not an image: no preview; Run gives the command line's one-line error
        return None
    return _text(path)


def _text(path) -> str | None:
    return None if path is None else str(path)


def _job_tab(service: AppService, tab: str, files: list[gr.components.Component], run_label: str,
             results: list[gr.components.Component], outputs_of) -> None:
    """The rest of one tab below its input ``files``: settings, Run and Cancel, ``results``, status and warnings;
    Run calls ``service.<tab>(*files, controls, report)`` and shows ``outputs_of(outcome)`` in ``results``."""
    controls = _controls(tab)
    with gr.Row():
        run = gr.Button(run_label, variant="primary", elem_id=f"{tab}-run")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{tab}-cancel")
    with gr.Row():
        for component in results:
            component.render()
    status = gr.Textbox(label="Status", interactive=False, elem_id=f"{tab}-status")
    warnings = gr.Textbox(label="Warnings", interactive=False, lines=2, elem_id=f"{tab}-warnings")
    action, names, count = getattr(service, tab), list(controls), len(files)

    def handler(request: gr.Request, progress=gr.Progress(), *values):
        def report(p: JobProgress):
            progress((p.done, p.total), desc=p.desc, unit="frames")

        outcome = action(*values[:count], Controls(**dict(zip(names, values[count:]))), report,
                         owner=_page(request))
        return (*outputs_of(outcome), "\n".join(outcome.warnings), outcome.status)

    def stop(request: gr.Request) -> str:
        return service.cancel(_page(request))

    run.click(handler, [*files, *controls.values()], [*results, warnings, status], concurrency_limit=1,
              concurrency_id=JOB_GROUP, api_name=tab)
    # Cancel runs outside the job group (at once, even while a job holds it); one API name serves every tab. It
    # stops only the job its own page started.
    cancel.click(stop, None, status, concurrency_limit=None, api_name="cancel" if tab == "retarget" else False)


def _page(request: gr.Request | None) -> str | None:
    """The browser session (page) of a request: a job belongs to the page that started it."""
    return getattr(request, "session_hash", None) if request is not None else None


def _video_results(tab: str) -> tuple[list[gr.components.Component], object]:
    """The result player and download of a video tab, and the outcome's values for them."""
    results = [gr.Video(label="Result", interactive=False, render=False, elem_id=f"{tab}-result"),
               gr.File(label="Download", interactive=False, render=False, elem_id=f"{tab}-download")]
    return results, lambda outcome: (_text(outcome.files.get("video")),) * 2


def build(service: AppService) -> gr.Blocks:
    """The page, wired to ``service``."""
    with gr.Blocks(title="retarget", delete_cache=(CACHE_SECONDS, CACHE_SECONDS), analytics_enabled=False) as demo:
        gr.Markdown(f"# retarget\n{INTRO}")
        with gr.Tabs():
            with gr.Tab("Retarget", id="retarget"):
                with gr.Row():
                    files = [gr.Video(label="Driving video", sources=["upload"], elem_id="retarget-driving"),
                             gr.File(label="Identity photo", file_types=["image"], elem_id="retarget-identity")]
                    preview = gr.Image(label="Identity photo (preview)", interactive=False,
                                       elem_id="retarget-identity-preview")
                files[1].change(_image_or_none, files[1], preview)
                _job_tab(service, "retarget", files, "Run", *_video_results("retarget"))
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    files = [gr.Video(label="Video", sources=["upload"], elem_id="edit-video"),
                             gr.File(label="Expression source: photo, video or motion .npz",
                                     file_types=["image", "video", ".npz"], elem_id="edit-source")]
                _job_tab(service, "edit", files, "Run", *_video_results("edit"))
            with gr.Tab("Motion", id="motion"):
                with gr.Row():
                    files = [gr.Video(label="Video", sources=["upload"], elem_id="motion-video"),
                             gr.Textbox(label="Channels", placeholder="exp00,exp01,exp02,eyelid0,jaw0",
                                        info="comma-separated names (exp00..exp49, eyelid0, eyelid1, jaw0..jaw2) "
                                             "or numbers 0-54; empty = the default five", elem_id="motion-channels")]
                results = [gr.Image(label="Expression curves (raw and smoothed)", type="filepath", interactive=False,
                                    render=False, elem_id="motion-curves"),
                           gr.File(label="Motion file (.npz)", interactive=False, render=False,
                                   elem_id="motion-file")]
                _job_tab(service, "motion", files, "Extract", results,
                         lambda outcome: (_text(outcome.files.get("curves")), _text(outcome.files.get("motion"))))
    demo.queue(default_concurrency_limit=1)
    return demo
