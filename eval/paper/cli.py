"""Command line of the paper's image protocol.

    python -m eval.paper --identities PHOTOS/ --expressions EXPRESSIONS/ --models models -o OUT [--limit N]

Writes ``OUT/table.md``, ``OUT/results.json``, ``OUT/per_image.csv`` and ``OUT/images/<condition>/`` (see
:mod:`eval.paper.protocol`); an interrupted run continues where it stopped. Errors the user can fix are one line
on stderr with exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train.cli import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.paper",
        description="Render identities x expressions with and without the reference adapter and score them "
                    "(ID similarity, 3D Exp-MSE, FID when Inception weights are on this machine).")
    parser.add_argument("--identities", metavar="DIR", required=True,
                        help="folder of identity photos (the largest face of each)")
    parser.add_argument("--expressions", metavar="DIR", required=True,
                        help="folder of expression sources: images (largest face) and motion files .npz")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help="run folder (created; resumable)")
    parser.add_argument("--models", metavar="DIR", default=None, help="published models folder "
                        "(default $RETARGET_MODELS or ./models)")
    parser.add_argument("--base-model", metavar="DIR|ID", default=None, help="SD1.5 base (vae, tokenizer, scheduler)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the first N identities (sorted by file name) with a face")
    parser.add_argument("--reference", choices=("both", "on", "off"), default="both",
                        help="conditions: with and without the reference adapter (both, default), only with, only "
                             "without")
    parser.add_argument("--no-reference", dest="reference", action="store_const", const="off",
                        help="same as --reference off")
    parser.add_argument("--motion-frames", type=int, default=5, metavar="K",
                        help="expressions taken from each motion file: K valid frames evenly spread (default 5)")
    parser.add_argument("--undetected", choices=("skip", "template"), default="skip",
                        help="images where no face is found again: counted and not scored (skip, default), or "
                             "scored at the identity photo's keypoints in its aligned crop (template)")
    parser.add_argument("--inception", metavar="FILE", default=None,
                        help="Inception-v3 weights (torchvision layout) for FID (default: torchvision's file in the "
                             "local torch hub cache, if any; nothing is downloaded)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per diffusion call (default 8)")
    parser.add_argument("--steps", type=int, default=25, metavar="N", help="denoising steps (default 25)")
    parser.add_argument("--guidance", type=float, default=3.0, metavar="G", help="classifier-free guidance (default 3.0)")
    parser.add_argument("--expression-scale", type=float, default=1.0, metavar="S", help="expression adapter weight (1.0)")
    parser.add_argument("--reference-scale", type=float, default=0.8, metavar="S", help="reference LoRA weight (0.8)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed (default 0)")
    parser.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                        help="default bf16 on GPUs that compute in it natively (Ampere and newer), fp16 on older "
                             "GPUs, fp32 on the CPU")
    parser.add_argument("--smirk-channels", choices=("rgb", "bgr"), default="rgb",
                        help="channel order of SMIRK's input crop (default rgb)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _run(args: argparse.Namespace) -> None:
    from retarget.jobs.options import JobOptions, default_models_dir

    from .protocol import PaperOptions, run_protocol

    job = JobOptions(models=args.models or default_models_dir(), base_model=args.base_model, steps=args.steps,
                     guidance=args.guidance, expression_scale=args.expression_scale,
                     reference_scale=args.reference_scale, seed=args.seed, per_frame_noise=True,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                     smirk_channels=args.smirk_channels, progress=not args.no_progress)
    options = PaperOptions(job=job, identities=Path(args.identities), expressions=Path(args.expressions),
                           out=Path(args.output), limit=args.limit, reference=args.reference,
                           motion_frames=args.motion_frames, undetected=args.undetected, fid=not args.no_fid,
                           inception=None if args.inception is None else Path(args.inception))
    run_protocol(options)
    print((Path(args.output) / "table.md").read_text(), end="")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)
