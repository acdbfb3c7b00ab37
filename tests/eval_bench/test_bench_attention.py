"""The attention benchmark times the calls the pipeline really makes, and checks each kernel's numbers."""

from __future__ import annotations

import collections

import numpy as np
import torch
import torch.nn.functional as F

from eval.bench_attention import AttentionShape, measure, step_shapes
from retarget.testing.checkpoints import _UNET_FULL, _UNET_TINY


def _expected(shapes):
    counts = collections.Counter()
    for shape in shapes:
        counts[(shape.rows, shape.heads, shape.queries, shape.keys, shape.head_dim)] += shape.calls
    return counts


def _recording(monkeypatch, calls, active):
    original = F.scaled_dot_product_attention

    def record(query, key, value, *args, **kwargs):
        if active[0]:
            calls[(query.shape[0], query.shape[1], query.shape[2], key.shape[2], query.shape[3])] += 1
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", record)


def test_shapes_are_the_calls_of_one_denoising_step(tiny_checkpoint, monkeypatch):
    """One UNet evaluation of the pipeline with CFG and the reference on makes exactly the calls ``step_shapes``
    lists (the reference pass and the VAE left out)."""
    from retarget import ExpressionPipeline

    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    batch = 3
    rng = np.random.default_rng(0)
    args = dict(id_embeds=rng.standard_normal(512).astype(np.float32),
                expressions=rng.standard_normal((batch, 55)).astype(np.float32) * 0.5,
                reference_image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), num_inference_steps=1,
                guidance_scale=3.0, output_type="latent")
    pipe(**args)  # the reference pass runs once and is cached
    calls, active = collections.Counter(), [False]
    _recording(monkeypatch, calls, active)
    unet_forward = pipe.unet.forward

    def forward(*a, **kw):
        active[0] = True
        try:
            return unet_forward(*a, **kw)
        finally:
            active[0] = False

    monkeypatch.setattr(pipe.unet, "forward", forward)
    pipe(**args)
    assert calls == _expected(step_shapes(_UNET_TINY, batch, reference=True))


def test_full_size_shapes_match_an_sd15_unet(monkeypatch):
    """At the published size (the UNet on the meta device: shapes without weights), the stock UNet's calls are the
    listed ones without the adapters' (no reference, no expression tokens)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_UNET_FULL)
    calls, active = collections.Counter(), [True]
    _recording(monkeypatch, calls, active)
    side, batch = _UNET_FULL["sample_size"], 2
    with torch.no_grad():
        unet(torch.zeros(2 * batch, 4, side, side, device="meta"), 10,
             encoder_hidden_states=torch.zeros(2 * batch, 77, 768, device="meta"))
    listed = [s for s in step_shapes(_UNET_FULL, batch, reference=False) if s.what != "cross (expression)"]
    assert calls == _expected(listed)
    assert sorted({s.head_dim for s in listed}) == [40, 80, 160]  # SD1.5: 8 heads of 320, 640 and 1280 channels


def test_each_kernel_is_checked_against_float64_and_a_missing_one_is_reported():
    shape = AttentionShape("self", rows=2, heads=2, queries=64, keys=96, head_dim=16, calls=1)
    assert shape.flops == 4.0 * 2 * 2 * 64 * 96 * 16
    for backend in ("math", "flash"):  # both run on the CPU
        result = measure(shape, backend, torch.device("cpu"), torch.float32, repeats=2)
        assert result["rel_error"] < 1e-5 and result["ms"] > 0
        assert result["tflops"] == shape.flops / result["ms"] / 1e9
    assert set(measure(shape, "cudnn", torch.device("cpu"), torch.float32, repeats=2)) == {"error"}
