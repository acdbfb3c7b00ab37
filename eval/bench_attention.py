"""The UNet's attention calls under each SDPA kernel, at the shapes of one denoising step, in one run.

    python -m eval.bench_attention [--batch 16] [--dtype bf16] [--size full|tiny] [--reference on|off]
        [--backends flash,efficient,cudnn,math] [--repeats 20]

For every attention call of one UNet evaluation of the denoising loop (CFG: ``2 x batch`` rows; the unconditional
half attends over its own tokens, the conditional half over ``[own, reference]`` tokens; cross-attention over the
77 prompt tokens and the 4 expression tokens), this times
``torch.nn.functional.scaled_dot_product_attention`` restricted to each of ``--backends`` with CUDA events
(median of ``--repeats`` calls after warm-up), checks each kernel's output against a float64 computation on the same
inputs (relative error ``|out - ref| / |ref|``), and prints per shape and per backend the milliseconds and the
achieved TFLOP/s, then the whole step's attention time per backend (each shape times its number of calls) and
against the fastest kernel for each shape. A backend that cannot run a shape (head dimension, dtype, device) is
reported as such. The shapes come from the UNet config of ``--size`` (:mod:`retarget.testing.checkpoints`: SD1.5
for ``full``), so nothing is loaded. Meant for a GPU; on the CPU only ``math`` and the CPU flash kernel run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from retarget.testing.checkpoints import _UNET_FULL, _UNET_TINY

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
PROMPT_TOKENS = 77  # the identity prompt (CLIP's context length)
EXPRESSION_TOKENS = 4  # the expression adapter's tokens


@dataclass(frozen=True)
class AttentionShape:
    """One kind of attention call: ``rows`` batch rows of ``heads`` heads, ``queries`` x ``keys`` tokens of
    ``head_dim``; ``calls``: how many such calls one UNet evaluation makes."""

    what: str
    rows: int
    heads: int
    queries: int
    keys: int
    head_dim: int
    calls: int

    @property
    def flops(self) -> float:
        """Multiply-adds of ``Q K^T`` and ``P V``, counted as 2 FLOPs each."""
        return 4.0 * self.rows * self.heads * self.queries * self.keys * self.head_dim


def step_shapes(unet_config: dict, batch: int, reference: bool) -> list[AttentionShape]:
    """The attention calls of one UNet evaluation with CFG at ``batch`` frames (``2 x batch`` rows), grouped by
    shape. Follows diffusers' ``UNet2DConditionModel`` layout: ``layers_per_block`` transformer blocks per
    cross-attention down block, one more per up block, one in the middle; ``attention_head_dim`` is the number of
    heads (an SD1.5 naming quirk)."""
    side = unet_config["sample_size"]
    channels = unet_config["block_out_channels"]
    heads = unet_config["attention_head_dim"]
    per_level: dict[tuple[int, int], int] = {}  # (tokens, channels) -> transformer blocks
    for level, kind in enumerate(unet_config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            key = ((side >> level) ** 2, channels[level])
            per_level[key] = per_level.get(key, 0) + unet_config["layers_per_block"]
    mid = ((side >> (len(channels) - 1)) ** 2, channels[-1])
    per_level[mid] = per_level.get(mid, 0) + 1
    for level, kind in enumerate(unet_config["up_block_types"]):
        if kind.startswith("CrossAttn"):
            down_level = len(channels) - 1 - level
            key = ((side >> down_level) ** 2, channels[down_level])
            per_level[key] = per_level.get(key, 0) + unet_config["layers_per_block"] + 1
    shapes = []
    for (tokens, width), blocks in sorted(per_level.items(), reverse=True):
        head_dim = width // heads
        if reference:
            shapes.append(AttentionShape("self (unconditional)", batch, heads, tokens, tokens, head_dim, blocks))
            shapes.append(AttentionShape("self + reference", batch, heads, tokens, 2 * tokens, head_dim, blocks))
        else:
            shapes.append(AttentionShape("self", 2 * batch, heads, tokens, tokens, head_dim, blocks))
        shapes.append(AttentionShape("cross (prompt)", 2 * batch, heads, tokens, PROMPT_TOKENS, head_dim, blocks))
        shapes.append(AttentionShape("cross (expression)", 2 * batch, heads, tokens, EXPRESSION_TOKENS, head_dim,
                                     blocks))
    return shapes


def _inputs(shape: AttentionShape, device, dtype, generator) -> tuple[torch.Tensor, ...]:
    """Query, key and value laid out as the processors pass them: ``[rows, tokens, heads * head_dim]`` split into
    heads by a view and a transpose (strided, not contiguous per head)."""
    def make(tokens):
        x = torch.randn(shape.rows, tokens, shape.heads * shape.head_dim, generator=generator, device="cpu")
        return x.to(device, dtype).view(shape.rows, tokens, shape.heads, shape.head_dim).transpose(1, 2)
    return make(shape.queries), make(shape.keys), make(shape.keys)


def _reference(query, key, value) -> torch.Tensor:
    """Softmax attention in float64 on the CPU (the independent computation each kernel is checked against)."""
    q, k, v = (t.double().cpu() for t in (query, key, value))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


def time_call(fn, device, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after two warm-up calls (CUDA events on CUDA)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def measure(shape: AttentionShape, backend: str, device, dtype, repeats: int, check_rows: int = 1) -> dict:
    """Time one backend on one shape and check its first ``check_rows`` rows against :func:`_reference`.
    Returns ``{"ms", "tflops", "rel_error"}`` or ``{"error": reason}`` when the backend cannot run it."""
    generator = torch.Generator().manual_seed(hash((shape.queries, shape.keys, shape.head_dim)) % 2**31)
    query, key, value = _inputs(shape, device, dtype, generator)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            out = F.scaled_dot_product_attention(query, key, value)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = time_call(lambda: F.scaled_dot_product_attention(query, key, value), device, repeats)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return {"error": first.split(". ")[0][:120]}  # e.g. "No viable backend for scaled_dot_product_attention..."
    expected = _reference(query[:check_rows], key[:check_rows], value[:check_rows])
    got = out[:check_rows].double().cpu()
    rel_error = float((got - expected).norm() / expected.norm())
    return {"ms": ms, "tflops": shape.flops / ms / 1e9, "rel_error": rel_error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="frames per diffusion call (2x rows with CFG)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--reference", choices=("on", "off"), default="on")
    parser.add_argument("--backends", default="flash,efficient,cudnn,math")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    shapes = step_shapes(_UNET_FULL if args.size == "full" else _UNET_TINY, args.batch, args.reference == "on")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"SDPA kernels at the UNet's attention shapes: {name}, torch {torch.__version__}, {args.dtype}, batch "
          f"{args.batch} (CFG rows {2 * args.batch}), reference {args.reference}, median of {args.repeats}")
    totals = {b: 0.0 for b in backends}
    complete = {b: True for b in backends}
    best_total = 0.0
    for shape in shapes:
        results = {b: measure(shape, b, device, dtype, args.repeats) for b in backends}
        timed = {b: r["ms"] for b, r in results.items() if "ms" in r}
        best_total += shape.calls * min(timed.values()) if timed else 0.0
        cells = []
        for b in backends:
            r = results[b]
            if "ms" in r:
                totals[b] += shape.calls * r["ms"]
                cells.append(f"{b} {r['ms']:.3f} ms {r['tflops']:.0f} TF/s err {r['rel_error']:.1e}")
            else:
                complete[b] = False
                cells.append(f"{b} n/a ({r['error']})")
        print(f"{shape.what:>20} x{shape.calls:<2} rows {shape.rows:>3} heads {shape.heads} q {shape.queries:>5} "
              f"k {shape.keys:>5} d {shape.head_dim:>3}: " + "; ".join(cells))
        print(json.dumps({"bench": "attention", "device_name": name, "dtype": args.dtype, **shape.__dict__,
                          "results": results}))
    for b in backends:
        note = "" if complete[b] else " (some shapes could not run: their time is left out)"
        print(f"one UNet evaluation's attention with {b}: {totals[b]:.2f} ms{note}")
    print(f"with the fastest kernel for each shape: {best_total:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
