"""The speed settings compute the same math: LoRA folding, fused Q/K/V, channels-last (fp32, tiny weights)."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from retarget.models.attention import AttentionContext, ReferenceSelfAttnProcessor, fuse_self_attention_projections
from retarget.models.formats import read_reference_lora


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(11)
    return dict(
        ids=torch.randn(512, generator=g),
        expressions=torch.randn(2, 55, generator=g),
        latents=torch.randn(2, 4, 16, 16, generator=g),
        reference=(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy(),
    )


def _render(pipe, clip, scale=0.8):
    return pipe(clip["ids"], clip["expressions"], reference_image=clip["reference"], reference_scale=scale,
                latents=clip["latents"], num_inference_steps=3).images


def _base_weights(unet):
    from retarget.models.adapters import lora_layers

    return {layer: layer.get_base_layer().weight.detach().clone() for layer in lora_layers(unet)}


def test_folded_lora_equals_peft_lora_and_restores_exactly(tiny_checkpoint, clip):
    from retarget import ExpressionPipeline

    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    loaded = _base_weights(pipe.unet)
    assert pipe.adapters.fold
    folded = {scale: _render(pipe, clip, scale) for scale in (0.3, 0.8)}

    # the folded weight is W0 + scale * up @ down, from the published file
    layers = read_reference_lora(tiny_checkpoint.models_dir / "ref_adapter" / "pytorch_lora_weights.safetensors")
    name, (down, up) = next(iter(layers.items()))
    layer = dict(pipe.unet.named_modules())[name]
    want = loaded[layer] + 0.8 * up @ down
    assert torch.allclose(layer.get_base_layer().weight, want, atol=1e-6)

    pipe.optimize(fold_lora=False, fuse_qkv=False)
    for scale, image in folded.items():
        assert np.abs(_render(pipe, clip, scale) - image).max() < 1e-5  # measured ~1e-6
    pipe.adapters.apply({})
    assert all(torch.equal(layer.get_base_layer().weight, weight) for layer, weight in loaded.items())

    pipe.optimize()  # fold again at many scales: the base weights come back bit for bit
    for scale in (0.1, 0.9, 0.37):
        pipe.adapters.apply({"reference": scale})
    pipe.adapters.apply({})
    assert all(torch.equal(layer.get_base_layer().weight, weight) for layer, weight in loaded.items())
    assert np.abs(_render(pipe, clip, 0.8) - folded[0.8]).max() < 1e-6


def _self_attention(dim=64, heads=4):
    torch.manual_seed(2)
    holder = torch.nn.Module()
    holder.attn1 = Attention(dim, heads=heads, dim_head=dim // heads).eval()
    return holder


@pytest.mark.parametrize("with_reference", [False, True])
def test_fused_projection_equals_separate_projections(with_reference):
    holder = _self_attention()
    attn = holder.attn1
    ctx = AttentionContext()
    processor = ReferenceSelfAttnProcessor("layer", ctx)
    attn.set_processor(processor)
    hidden = torch.randn(4, 16, 64)
    if with_reference:
        tokens = torch.randn(1, 12, 64)
        processor.prepare((attn.to_k(tokens), attn.to_v(tokens)), (2, 4))
    separate = attn(hidden)
    assert fuse_self_attention_projections(holder) == 1
    assert fuse_self_attention_projections(holder) == 0  # already fused
    fused = processor.qkv_weight
    assert fused.shape == (3 * 64, 64)
    assert attn.to_q.weight.data_ptr() == fused.data_ptr()  # the projections are views of the fused weight
    assert torch.allclose(attn(hidden), separate, atol=1e-6)
    with torch.no_grad():  # an in-place change of a projection (LoRA folding) is seen by the fused matmul
        attn.to_k.weight.mul_(2)
    assert torch.equal(fused[64:128], attn.to_k.weight)
    with_fused = attn(hidden)
    processor.qkv_weight = None  # back to three matmuls on the (changed) weights
    assert torch.allclose(attn(hidden), with_fused, atol=1e-6)
    assert not torch.allclose(with_fused, separate, atol=1e-3)


def test_fused_projection_skips_lora_while_it_is_active(tiny_checkpoint, clip):
    """With peft computing the LoRA (not folded), the fused base weights alone would be wrong: the processor
    uses the separate (LoRA-wrapped) projections then."""
    from retarget import ExpressionPipeline

    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    reference = _render(pipe, clip)
    pipe.optimize(fold_lora=False, fuse_qkv=True)
    assert np.abs(_render(pipe, clip) - reference).max() < 1e-5


def test_channels_last_equals_contiguous(pipe, clip):
    assert pipe.unet.conv_in.weight.is_contiguous()  # off by default (eager channels-last is slower on CUDA)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()
    contiguous = _render(pipe, clip)
    pipe.optimize(channels_last=True)
    try:
        conv = pipe.unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        processor = next(p for p in pipe.unet.attn_processors.values() if isinstance(p, ReferenceSelfAttnProcessor))
        assert processor.qkv_weight is not None
        assert np.abs(_render(pipe, clip) - contiguous).max() < 1e-5
    finally:
        pipe.optimize(channels_last=False)
