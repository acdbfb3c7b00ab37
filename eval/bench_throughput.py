"""Throughput of the official per-image recipe vs the batched ExpressionPipeline, on the same checkpoint.

    python -m eval.bench_throughput --size tiny            # CPU proxy (random tiny weights)
    python -m eval.bench_throughput --size full --dtype bf16 --batch-size 8   # SD1.5-sized random weights, GPU
    python -m eval.bench_throughput --e2e CLIP --identity PHOTO --size tiny   # the whole command, staged vs not

(a) ``official``: stock diffusers pipeline, one frame per call, the reference UNet re-run for every call (the
release's demo recipe, :mod:`eval.official_recipe`). (b) ``unoptimised``: :class:`retarget.ExpressionPipeline` on
a whole clip in batches, reference features computed once, the reference LoRA computed by peft and separate
Q/K/V projections. (c) ``batched``: the same with the default speed settings (LoRA folded into the weights, fused
self-attention Q/K/V). (c') ``channels-last`` (only with ``--paths``): (c) with the UNet and VAE in channels-last.
(c'') ``cudnn-benchmark`` (only with ``--paths``): (c) with ``torch.backends.cudnn.benchmark`` on (cuDNN times its
convolution algorithms for each new shape and keeps the fastest; on the CPU the same as (c)).
(d) ``compiled`` (``--compile``): (c) with ``torch.compile`` (inductor; the UNet in channels-last); in ``--paths``
``compiled:MODE`` picks a compile mode (``reduce-overhead``: CUDA graphs; ``max-autotune``...). (d'')
``compiled-vae`` (only with ``--paths``; also ``compiled-vae:MODE``): (d) with the VAE decode compiled too
(``ExpressionPipeline.compile(decoder=True)``). (d')
``compiled-tuned`` (only with ``--paths``): (d) with the inductor options of :data:`INDUCTOR_TUNING` (1x1
convolutions as matmuls, coordinate-descent tuning of the generated kernels, no epilogue fusion), the settings
PyTorch's and diffusers' guides to fast diffusion use; a longer first compile. (e) ``lcm``
(``--lcm-steps N``): (c) with a random LCM-LoRA of the published layout, N steps, guidance 1.5. Each path runs in
its own process so its peak memory is its own. Also prints the FLOPs of one frame (torch FlopCounterMode) and, on
CUDA, the share of the measured bf16 matmul peak that the batched and compiled paths reach. ``--compare`` prints how
far each path's first batch is from the batched path's (and, with ``--fp32-reference``, the dtype's own noise
against an fp32 render); ``--profile-dir`` writes a torch.profiler table of one batch of the batched and the
compiled path.
``--models``/``--base-model`` run on real weights instead.

End to end (``--e2e [CLIP]``): the command line itself (``retarget run``, ``retarget edit`` with the photo as
the expression source, and ``retarget batch`` of run on a folder of ``--batch-clips`` copies of the clip;
``--commands``), each in a fresh process, with the overlapped stages (``staged``) and with ``--no-overlap``
(``sequential``, the same code one stage after another), staged with the model's work during the scans forced on
(``overlapped``: the warm-up, and batch's scan of the next clip while one renders; ``staged`` does this on CUDA
only, see :func:`retarget.jobs.session.overlaps_scan`), staged with ``--compile`` (``compiled``, where the compile
runs during the face scan), sequential with ``--compile`` (``compiled-sequential``, where it delays the first
batch) and with neither flag (``auto``: the default's own choice, see
:func:`retarget.jobs.session.compile_chosen`; its record says what it chose); ``--order`` picks them. Without
CLIP a synthetic clip of a moving face (:mod:`retarget.testing.media`, ``--synthetic-frames``) is used, without
``--identity`` the synthetic face photo. Weights: random of ``--size`` with the face models
(:mod:`retarget.testing`), or ``--models``/``--base-model``. Per command and order it prints one JSON line (frames,
frames/s over the whole process, model load and imports included, and over the job; time to the first finished
frame; each stage's busy seconds, see :mod:`retarget.jobs.stage_times`; device, dtype, peak GPU and host memory),
then a table and the speed-up of staged over sequential.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from retarget.jobs.options import COMPILE_MODES  # the modes the compiled path can be timed with (compiled:MODE)

PATHS = ("official", "unoptimised", "batched", "channels-last", "cudnn-benchmark", "compiled", "compiled-vae",
         "compiled-tuned", "lcm")
#: The paths that compile, and the ones of them that take a compile mode (``compiled:MODE``).
COMPILED_PATHS = ("compiled", "compiled-vae", "compiled-tuned")
MODE_PATHS = ("compiled", "compiled-vae")
#: Inductor options of the ``compiled-tuned`` path (``torch.compile(options=...)``): the same math, other kernels.
INDUCTOR_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                   "coordinate_descent_check_all_directions": True, "epilogue_fusion": False}
E2E_ORDERS = ("staged", "sequential", "overlapped", "compiled", "compiled-sequential", "auto")
#: The commands ``--e2e`` times (``batch``: ``run`` on a folder of copies of the clip).
E2E_COMMANDS = ("run", "edit", "batch")
#: The command-line flags of each end-to-end order ("overlapped" is "staged" with the model's work overlapping the
#: scans forced on, as on CUDA: see e2e_child). The orders without ``--compile`` say ``--no-compile``: on CUDA a
#: long clip would else be compiled by default (see :func:`retarget.jobs.session.compile_chosen`).
E2E_FLAGS = {"staged": ["--no-compile"], "sequential": ["--no-overlap", "--no-compile"],
             "overlapped": ["--no-compile"], "compiled": ["--compile"], "auto": [],
             "compiled-sequential": ["--compile", "--no-overlap"]}


def _write_random_lcm_lora(models: str, folder: str) -> str:
    """A random LCM-LoRA (kohya keys) for the UNet in ``models`` (benchmarks only: it measures speed, not quality)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from retarget.models.loading import load_unet
    from retarget.testing.checkpoints import random_lcm_lora

    unet = load_unet(Path(models) / "arc2face")
    path = str(Path(folder) / "lcm_lora.safetensors")
    save_file(random_lcm_lora(unet, rank=64, generator=torch.Generator().manual_seed(0), std=0.01), path)
    return path


def parse_paths(text: str) -> list[str]:
    """``--paths``: comma-separated names of :data:`PATHS`, those of :data:`MODE_PATHS` optionally with a mode
    (one of :data:`COMPILE_MODES`, e.g. ``compiled:reduce-overhead`` for CUDA graphs). Raises ValueError."""
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p.partition(":")[0] not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)} (choose from {', '.join(PATHS)})")
    modes = [p for p in wanted if ":" in p and (p.partition(":")[0] not in MODE_PATHS
                                                or p.partition(":")[2] not in COMPILE_MODES)]
    if modes:
        raise ValueError(f"unknown mode in {', '.join(modes)} (only {' and '.join(MODE_PATHS)} take one: "
                         f"compiled:{{{','.join(COMPILE_MODES)}}})")
    return wanted


def device_name(device) -> str:
    """What ``device`` is, for the figures: the GPU's name (``torch.cuda.get_device_name``) for CUDA, else the
    processor's model name (``/proc/cpuinfo``, else ``platform.processor()``) with the cores this process may use."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    if device.type != "cpu":
        return device.type
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or platform.machine() or 'CPU'}, {cores} cores"


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(frames: int, latent_shape, image_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        id_embed=torch.randn(512, generator=g),
        expressions=torch.randn(frames, 55, generator=g) * 0.5,
        latents=torch.randn(1, *latent_shape, generator=g).expand(frames, *latent_shape).clone(),
        reference=(torch.rand(image_size, image_size, 3, generator=g) * 255).to(torch.uint8).numpy(),
    )


def _to_uint8(images) -> np.ndarray:
    """``[B, H, W, 3]`` images in [0, 1] (float) or already 8-bit, as uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def compare_outputs(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """How far two renders of the same inputs are apart: grey levels (0-255) and PSNR (dB)."""
    diff = np.abs(candidate.astype(np.int16) - reference.astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    return {"max_abs": int(diff.max()), "mean_abs": round(float(diff.mean()), 4),
            "psnr_db": float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)}


def _write_profile(render_batch, device, path: str, rows: int = 30) -> None:
    """Profile one batch (torch.profiler) and write the operators and kernels by their own device time (CPU time
    on the CPU), headed on CUDA by how busy the device was and its time by operator (:mod:`eval.device_profile`)."""
    from torch.profiler import ProfilerActivity, profile

    from eval.device_profile import format_summary, summarise

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        render_batch()
        _sync(device)
        wall = time.perf_counter() - start
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "w") as handle:
        if device.type == "cuda":
            handle.write(format_summary(summarise(prof.events(), wall)) + "\n")
        handle.write(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_path(args) -> dict:
    """Run one path in this process and return its figures."""
    device = torch.device(args.device)
    dtype = _dtype(args.dtype)
    reference_on = args.reference == "on"
    if args.path == "official":
        from eval.official_recipe import OfficialRecipe

        recipe = OfficialRecipe(args.models, args.base_model, device=device, dtype=dtype)
        unet = recipe.pipe.unet
        size = unet.config.sample_size * 2 ** (len(recipe.pipe.vae.config.block_out_channels) - 1)
        data = _inputs(args.frames, (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), size)

        def render(count):
            images = []
            for i in range(count):
                images.append(recipe.render_one(
                    data["id_embed"], data["expressions"][i], reference_image=data["reference"] if reference_on else None,
                    latents=data["latents"][i:i + 1], num_inference_steps=args.steps, guidance_scale=args.guidance))
            return np.stack([np.asarray(image) for image in images[:args.batch_size]])
    else:
        from retarget import ExpressionPipeline

        pipe = ExpressionPipeline.from_pretrained(args.models, args.base_model, device=device, dtype=dtype)
        if args.path == "unoptimised":
            pipe.optimize(fold_lora=False, fuse_qkv=False, channels_last=False)
        if args.path == "channels-last":
            pipe.optimize(channels_last=True)
        if args.path == "cudnn-benchmark":
            torch.backends.cudnn.benchmark = True  # the warm-up batch pays the algorithm search
        if args.path in ("compiled", "compiled-vae"):
            pipe.compile(mode=None if args.compile_mode in (None, "default") else args.compile_mode,
                         decoder=args.path == "compiled-vae")
        if args.path == "compiled-tuned":
            pipe.compile(options=dict(INDUCTOR_TUNING))
        if args.path == "lcm":
            pipe.load_lcm_lora(args.lcm_lora)
            args.steps, args.guidance = args.lcm_steps, 1.5
        data = _inputs(args.frames, pipe.latent_shape, pipe.image_size)

        def render(count):
            first = None
            for start in range(0, count, args.batch_size):
                stop = min(count, start + args.batch_size)
                images = pipe(data["id_embed"], data["expressions"][start:stop],
                              reference_image=data["reference"] if reference_on else None,
                              latents=data["latents"][start:stop], num_inference_steps=args.steps,
                              guidance_scale=args.guidance).images
                first = images if first is None else first
            return first

    begin = time.perf_counter()
    render(min(args.warmup, args.frames))  # warm-up (kernels, allocator, compile)
    _sync(device)
    warmup_seconds = time.perf_counter() - begin
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rounds = []
    for _ in range(args.repeats):  # the fastest round: the least disturbed by other work on a shared machine
        start = time.perf_counter()
        first_batch = render(args.frames)
        _sync(device)
        rounds.append(time.perf_counter() - start)
    seconds = min(rounds)
    if args.path.startswith("compiled") and pipe.compile_failure is not None:  # rendered eagerly: no compiled figure
        raise SystemExit(f"torch.compile failed ({pipe.compile_failure}): no compiled figure")
    peak_memory_mb = _peak_memory_mb(device)
    if args.save_output:  # the first batch as 8-bit images, for comparing the paths' results
        np.save(args.save_output, _to_uint8(first_batch))
    if args.profile:
        _write_profile(lambda: render(min(args.batch_size, args.frames)), device, args.profile)
    name = args.path + (f":{args.compile_mode}" if args.compile_mode else "")
    return {"path": name, "frames": args.frames, "seconds": seconds, "frames_per_s": args.frames / seconds,
            "warmup_s": warmup_seconds, "peak_memory_mb": peak_memory_mb,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def flops_per_frame(models, base_model, steps: int, guidance: float, reference_on: bool, device="cpu",
                    dtype=torch.float32) -> float:
    """FLOPs of one output frame: steps x UNet (x2 with CFG) + VAE decode + (reference pass, amortised away)."""
    from torch.utils.flop_counter import FlopCounterMode

    from retarget import ExpressionPipeline

    pipe = ExpressionPipeline.from_pretrained(models, base_model, device=device, dtype=dtype)
    data = _inputs(1, pipe.latent_shape, pipe.image_size)
    pipe(data["id_embed"], data["expressions"], reference_image=data["reference"] if reference_on else None,
         latents=data["latents"], num_inference_steps=1, guidance_scale=guidance)  # reference cached now
    counter = FlopCounterMode(display=False)
    with counter:
        pipe(data["id_embed"], data["expressions"], reference_image=data["reference"] if reference_on else None,
             latents=data["latents"], num_inference_steps=1, guidance_scale=guidance)
    one_step = counter.get_total_flops()
    with FlopCounterMode(display=False) as decode_counter:
        pipe.decode(data["latents"].to(pipe.device, pipe.dtype))
    decode = decode_counter.get_total_flops()
    return (one_step - decode) * steps + decode


def matmul_peak_tflops(device) -> float:
    """Measured dense bf16 matmul throughput of this GPU (TFLOP/s)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def e2e_child(argv: list[str], overlap_scan: bool = False) -> dict:
    """Run ``retarget ARGV`` in this process; the job's stage record (see :mod:`retarget.jobs.stage_times`; for
    ``batch`` the sum over its clips). ``overlap_scan``: give the model work during the face scans (the warm-up,
    ``batch``'s scan of the next clip during a render) on any device, not only on CUDA (see
    :func:`retarget.jobs.session.overlaps_scan`), to measure what that does elsewhere."""
    from retarget.cli import main as cli_main
    from retarget.jobs import session
    from retarget.jobs.stage_times import last_job

    if overlap_scan:
        session.overlaps_scan = lambda device: True

    code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"retarget {' '.join(argv)} exited with {code}")
    return last_job().summary()


def write_models(folder: str, size: str) -> dict:
    """Random weights of ``size`` with the face models in the new folder ``folder`` (see
    :func:`retarget.testing.weights.write_random_weights`); their folders."""
    from retarget.testing.weights import write_random_weights

    written = write_random_weights(folder, size=size)
    return {"models": str(written.models_dir), "base_model": str(written.base_dir)}


def e2e_inputs(args, folder: str) -> tuple[str, str, str, str]:
    """(models, base_model, clip, photo) for the end-to-end mode, writing what was not given into ``folder``."""
    from fractions import Fraction
    from pathlib import Path

    from PIL import Image

    from retarget.testing.media import face_photo, moving_face_frames, write_clip

    models, base = args.models, args.base_model
    if not models:
        written = write_models(str(Path(folder) / "weights"), args.size)
        models, base = written["models"], written["base_model"]
    clip = args.e2e or str(write_clip(Path(folder) / "synthetic.mp4",
                                      moving_face_frames(args.synthetic_frames, width=320, height=240),
                                      Fraction(args.synthetic_fps)))
    photo = args.identity
    if not photo:
        photo = str(Path(folder) / "photo.png")
        Image.fromarray(face_photo()).save(photo)
    return models, base, clip, photo


def e2e(args) -> int:
    """The end-to-end comparison (see the module doc); prints JSON lines and a table."""
    orders = ["staged", "sequential"] if args.order == "both" else [o.strip() for o in args.order.split(",")]
    unknown = sorted(set(orders) - set(E2E_ORDERS))
    if unknown:
        raise SystemExit(f"--order: unknown {', '.join(unknown)} (choose from {', '.join(E2E_ORDERS)} or both)")
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = sorted(set(commands) - set(E2E_COMMANDS)) or ([] if commands else ["(none)"])
    if unknown:
        raise SystemExit(f"--commands: unknown {', '.join(unknown)} (choose from {', '.join(E2E_COMMANDS)})")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models, base, clip, photo = e2e_inputs(args, tmp)
        if "batch" in commands:  # a folder of copies of the clip
            os.makedirs(f"{tmp}/clips")
            for index in range(args.batch_clips):
                shutil.copyfile(clip, f"{tmp}/clips/{index:03d}{os.path.splitext(clip)[1]}")
        for command in commands:
            for order in orders:
                source = ["--expression", photo] if command == "edit" else ["--identity", photo]
                inputs, output = (f"{tmp}/clips", f"{tmp}/batch-{order}") if command == "batch" else \
                    (clip, f"{tmp}/{command}-{order}.mp4")
                argv = [command, inputs, *source, "-o", output, "--models", models,
                        "--steps", str(args.steps), "--guidance", str(args.guidance), "--batch-size",
                        str(args.batch_size), "--chunk-size", str(args.chunk_size), "--device", args.device,
                        "--dtype", args.dtype, "--no-progress"] + (["--base-model", base] if base else []) \
                    + E2E_FLAGS[order]
                begin = time.perf_counter()
                child = [sys.executable, "-m", "eval.bench_throughput", "--e2e-child", json.dumps(argv)] \
                    + ["--e2e-overlap-scan"] * (order == "overlapped")
                done = subprocess.run(child, capture_output=True, text=True)
                seconds = time.perf_counter() - begin
                failed_compile = [line for line in done.stderr.splitlines() if "torch.compile failed" in line]
                if done.returncode != 0 or failed_compile:  # report it, go on with the others
                    print(f"{command} ({order}) failed:\n{done.stderr[-3000:]}", flush=True)
                    continue
                record = json.loads(done.stdout.strip().splitlines()[-1])
                record.update(order=order, device_name=device_name(args.device), command_s=round(seconds, 3),
                              command_frames_per_s=round(record["frames"] / seconds, 4))
                if order == "auto":  # what the default chose: the line it prints when it compiles
                    record["compiled_by_default"] = next((line.split("compiling the UNet: ", 1)[1] for line in
                                                          done.stderr.splitlines() if "compiling the UNet: " in line),
                                                         None)
                results.append(record)
                print(json.dumps(record), flush=True)
    if not results:
        raise SystemExit("every command failed")
    print(f"\nclip={clip} size={args.size} device={args.device} ({device_name(args.device)}) dtype={args.dtype} "
          f"steps={args.steps} "
          f"batch={args.batch_size} chunk={args.chunk_size}")
    stages = list(results[0]["busy_s"])
    header = f"{'command':>8} {'order':>10} {'frames':>6} {'fps cmd':>8} {'fps job':>8} {'first s':>8} " + \
        " ".join(f"{name:>7}" for name in stages) + f" {'GPU MiB':>8} {'host MiB':>8}"
    print(header)
    for r in results:
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        print(f"{r['command']:>8} {r['order']:>10} {r['frames']:>6} {r['command_frames_per_s']:>8.3f} "
              f"{r['frames_per_s']:>8.3f} {r['first_frame_s']:>8.2f} "
              + " ".join(f"{r['busy_s'][name]:>7.2f}" for name in stages) + f" {gpu:>8} {r['peak_host_mib']:>8.0f}")
    for r in results:  # what each load was spent on
        parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in r.get("load_parts_s", {}).items())
        print(f"load s, {r['command']} {r['order']}: {parts or '-'}")
    for r in results:  # the diffusion batches: a slow first batch is a one-time cost, slow later ones are not
        b = r.get("batches") or {}
        later = "-" if b.get("mean_later_s") is None else f"mean {b['mean_later_s']:.2f}, max {b['max_later_s']:.2f}"
        first = "-" if b.get("first_s") is None else f"{b['first_s']:.2f}"
        print(f"batches, {r['command']} {r['order']}: {b.get('count', 0)}, first {first} s, later {later} s; "
              f"torch.compile compilations during them: {r.get('compiles_in_render', 0)}")
    for command in commands:
        by_order = {r["order"]: r for r in results if r["command"] == command}
        for faster, slower in (("staged", "sequential"), ("overlapped", "staged"), ("compiled", "staged"),
                               ("compiled", "compiled-sequential"), ("auto", "staged")):
            if faster in by_order and slower in by_order:
                a, b = by_order[faster], by_order[slower]
                print(f"speed-up {faster} vs {slower}, {command}: "
                      f"{a['command_frames_per_s'] / b['command_frames_per_s']:.2f}x (whole command), "
                      f"{a['frames_per_s'] / b['frames_per_s']:.2f}x (job)")
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--e2e", nargs="?", const="", default=None, metavar="CLIP",
                        help="end to end: time `retarget run`/`edit` on CLIP (default: a synthetic clip)")
    parser.add_argument("--identity", help="(--e2e) identity photo (default: the synthetic face photo)")
    parser.add_argument("--order", default="both",
                        help="(--e2e) comma-separated: staged (overlapped stages), sequential (--no-overlap), "
                             "compiled (staged with --compile), compiled-sequential (--compile --no-overlap), "
                             "overlapped (staged with the GPU-only overlaps forced on); both = staged,sequential "
                             "(default)")
    parser.add_argument("--commands", default="run,edit",
                        help="(--e2e) commands to time: run, edit, batch (run on a folder; default run,edit)")
    parser.add_argument("--batch-clips", type=int, default=3, help="(--e2e) copies of the clip in batch's folder")
    parser.add_argument("--chunk-size", type=int, default=16, help="(--e2e) --chunk-size of the commands")
    parser.add_argument("--synthetic-frames", type=int, default=48, help="(--e2e) frames of the synthetic clip")
    parser.add_argument("--synthetic-fps", default="25", help="(--e2e) frame rate of the synthetic clip (e.g. 30000/1001)")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-overlap-scan", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--models", help="models folder (default: random weights of --size in a temp folder)")
    parser.add_argument("--base-model", help="SD1.5 base folder (with --models)")
    parser.add_argument("--frames", type=_positive, default=None, help="frames per path (default 24 tiny, 16 full)")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--steps", type=_positive, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--reference", choices=["on", "off"], default="on")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: the jobs' (bf16 on GPUs of compute capability 8.0 and newer, fp16 on older "
                             "GPUs, fp32 on the CPU)")
    parser.add_argument("--compile", action="store_true", help="also time the batched path with torch.compile")
    parser.add_argument("--paths", help=f"only these paths, comma-separated ({', '.join(PATHS)}; "
                                        f"{' and '.join(MODE_PATHS)} also as PATH:MODE, MODE one of "
                                        f"{', '.join(COMPILE_MODES)}); default: "
                                        "official, unoptimised, batched, plus compiled/lcm when asked for")
    parser.add_argument("--lcm-steps", type=int, default=0,
                        help="also time few-step sampling with a random LCM-LoRA at this many steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None,
                        help="time the clip this many times per path and keep the fastest (default 3 tiny, 1 full)")
    parser.add_argument("--compare", action="store_true",
                        help="print how far each path's first batch is from the batched path's (grey "
                             "levels, PSNR); with --fp32-reference also from an fp32 render of the unoptimised path")
    parser.add_argument("--fp32-reference", action="store_true",
                        help="(with --compare) also render the first batch with the unoptimised path in fp32")
    parser.add_argument("--profile-dir", help="write a torch.profiler table of one batch of the batched and the "
                                              "compiled path here (profile_<path>.txt)")
    parser.add_argument("--write-models", metavar="DIR",
                        help="only write random weights of --size with the face models into DIR and print their "
                             "folders as JSON (reuse them with --models/--base-model)")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--lcm-lora", help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.e2e_child:  # child process: one command
        print(json.dumps(e2e_child(json.loads(args.e2e_child), overlap_scan=args.e2e_overlap_scan)))
        return 0
    if args.write_models:
        print(json.dumps(write_models(args.write_models, args.size)))
        return 0
    if args.dtype is None:  # the jobs' default: bf16 on GPUs that compute in it natively, fp16 on older ones
        from retarget.pipeline import default_device_dtype

        dtype = default_device_dtype(args.device)[1]
        args.dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    if args.e2e is not None:
        return e2e(args)
    args.frames = args.frames or (24 if args.size == "tiny" else 16)
    args.repeats = args.repeats or (3 if args.size == "tiny" else 1)

    if args.path:  # child process: one path
        print(json.dumps(run_path(args)))
        return 0

    paths = ["official", "unoptimised", "batched"] + ["compiled"] * args.compile + ["lcm"] * (args.lcm_steps > 0)
    if args.paths:
        try:
            paths = parse_paths(args.paths)
        except ValueError as exc:
            parser.error(f"--paths: {exc}")
        args.lcm_steps = args.lcm_steps or (6 if "lcm" in paths else 0)
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.models:
            from retarget.testing.checkpoints import write_random_checkpoint

            ckpt = write_random_checkpoint(tmp, size=args.size, dtype=torch.float16 if args.size == "full" else torch.float32)
            args.models, args.base_model = str(ckpt.models_dir), str(ckpt.base_dir)
        if args.lcm_steps > 0:
            args.lcm_lora = _write_random_lcm_lora(args.models, tmp)
        results, outputs = {}, {}

        def child(path, dtype=args.dtype, frames=args.frames, warmup=args.warmup, repeats=args.repeats, tag=None):
            base, _, mode = path.partition(":")
            cmd = [sys.executable, "-m", "eval.bench_throughput", "--path", base, "--models", args.models,
                   "--frames", str(frames), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--guidance", str(args.guidance), "--reference", args.reference, "--device", args.device,
                   "--dtype", dtype, "--warmup", str(warmup), "--lcm-steps", str(args.lcm_steps),
                   "--repeats", str(repeats)]
            if args.base_model:
                cmd += ["--base-model", args.base_model]
            if mode:
                cmd += ["--compile-mode", mode]
            if path == "lcm":
                cmd += ["--lcm-lora", args.lcm_lora]
            if args.compare:
                outputs[tag or path] = f"{tmp}/{tag or path}.npy"
                cmd += ["--save-output", outputs[tag or path]]
            if args.profile_dir and base in ("batched",) + COMPILED_PATHS and tag is None:
                cmd += ["--profile", f"{args.profile_dir}/profile_{path.replace(':', '-')}.txt"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:  # report it and go on with the other paths
                print(f"path {tag or path} failed:\n{done.stderr[-3000:]}", flush=True)
                outputs.pop(tag or path, None)
                return None
            return json.loads(done.stdout.strip().splitlines()[-1])

        for path in paths:
            r = child(path)
            if r is None:
                continue
            results[path] = r
            print(f"{path:>11}: {r['frames_per_s']:8.3f} frames/s, first batch {r['warmup_s']:.2f} s, "
                  f"peak memory {r['peak_memory_mb']:.0f} MB", flush=True)
        if args.compare and args.fp32_reference:
            child("unoptimised", dtype="fp32", frames=min(args.frames, args.batch_size, 4), warmup=0, repeats=1,
                  tag="fp32")
        flops = flops_per_frame(args.models, args.base_model, args.steps, args.guidance, args.reference == "on",
                                device=args.device, dtype=_dtype(args.dtype))
        differences = {}
        if args.compare and "batched" in outputs:
            batched = np.load(outputs["batched"])
            for name, file in outputs.items():
                if name != "batched":
                    other = np.load(file)
                    count = min(len(other), len(batched))
                    differences[f"{name} vs batched"] = compare_outputs(other[:count], batched[:count])
            if "fp32" in outputs and "unoptimised" in outputs:
                fp32, unoptimised = np.load(outputs["fp32"]), np.load(outputs["unoptimised"])
                count = min(len(fp32), len(unoptimised))
                differences[f"unoptimised vs fp32 ({args.dtype} noise)"] = compare_outputs(unoptimised[:count],
                                                                                           fp32[:count])

    print(f"size={args.size} device={args.device} ({device_name(args.device)}) dtype={args.dtype} steps={args.steps} "
          f"guidance={args.guidance} "
          f"reference={args.reference} frames={args.frames} batch={args.batch_size} best of {args.repeats}")
    print(f"FLOPs per frame: {flops / 1e12:.4f} TFLOP")
    paths = [path for path in paths if path in results]
    if not paths:
        raise SystemExit("every path failed")
    for path in paths:
        r = results[path]
        note = f"  ({args.lcm_steps} steps, guidance 1.5)" if path == "lcm" else ""
        print(f"{path:>11}: {r['frames_per_s']:8.3f} frames/s  {r['seconds']:8.2f} s  "
              f"first batch {r['warmup_s']:7.2f} s  peak memory {r['peak_memory_mb']:9.1f} MB{note}")
        print(json.dumps({"bench": "pipeline", "size": args.size, "device": args.device,
                          "device_name": device_name(args.device), "dtype": args.dtype,
                          "batch": args.batch_size, **r}))
    if "official" in results:
        for path in [p for p in paths if p != "official"]:
            print(f"speed-up {path} vs official: {results[path]['frames_per_s'] / results['official']['frames_per_s']:.2f}x")
    if "unoptimised" in results:
        for path in [p for p in paths if p not in ("official", "unoptimised")]:
            print(f"speed-up {path} vs unoptimised: "
                  f"{results[path]['frames_per_s'] / results['unoptimised']['frames_per_s']:.2f}x")
    for name, difference in differences.items():
        print(f"difference {name}: max {difference['max_abs']} grey levels, mean {difference['mean_abs']}, "
              f"PSNR {difference['psnr_db']} dB")
        print(json.dumps({"bench": "difference", "pair": name, **difference}))
    if args.device.startswith("cuda"):
        peak = matmul_peak_tflops(torch.device(args.device))
        for path in [p for p in paths if p.partition(":")[0] in ("batched", "channels-last", "cudnn-benchmark")
                     + COMPILED_PATHS]:
            achieved = flops * results[path]["frames_per_s"] / 1e12
            print(f"bf16 matmul peak {peak:.0f} TFLOP/s; {path} path {achieved:.0f} TFLOP/s = "
                  f"{100 * achieved / peak:.1f}% of peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
