"""The processors against independent computations with diffusers' own modules."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

from retarget.models.attention import (
    AttentionContext,
    ExpressionCrossAttnProcessor,
    ReferenceBank,
    ReferenceSelfAttnProcessor,
)
from retarget.models.expression import ExpressionProjection


def test_projection_matches_diffusers_faceid_projection():
    torch.manual_seed(0)
    ours = ExpressionProjection(55, 110, 4, 64)
    theirs = IPAdapterFaceIDImageProjection(image_embed_dim=55, cross_attention_dim=64, mult=2, num_tokens=4)
    state = {k.replace("proj.0", "ff.net.0.proj").replace("proj.2", "ff.net.2"): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    x = torch.randn(5, 55)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert ours(x).shape == (5, 4, 64)


def _attention(query_dim=64, cross_dim=None, heads=4):
    torch.manual_seed(1)
    return Attention(query_dim, cross_attention_dim=cross_dim, heads=heads, dim_head=query_dim // heads).eval()


@pytest.mark.parametrize("scale", [0.0, 0.7, 1.0])
def test_expression_branch_matches_diffusers_ip_adapter(scale):
    attn = _attention(64, cross_dim=48)
    ctx = AttentionContext()
    ours = ExpressionCrossAttnProcessor(ctx, hidden_size=64, token_dim=48)
    torch.nn.init.normal_(ours.to_k_ip.weight)
    torch.nn.init.normal_(ours.to_v_ip.weight)
    theirs = IPAdapterAttnProcessor2_0(hidden_size=64, cross_attention_dim=48, num_tokens=(4,), scale=scale)
    theirs.to_k_ip[0].weight.data.copy_(ours.to_k_ip.weight)
    theirs.to_v_ip[0].weight.data.copy_(ours.to_v_ip.weight)
    hidden, prompt = torch.randn(3, 20, 64), torch.randn(3, 7, 48)
    tokens = torch.randn(3, 4, 48)  # a different expression per row
    ctx.expression_tokens, ctx.expression_scale = tokens, scale
    got = ours(attn, hidden, encoder_hidden_states=prompt)
    for row in range(3):  # diffusers' processor, one row at a time
        want = theirs(attn, hidden[row:row + 1], encoder_hidden_states=(prompt[row:row + 1], [tokens[row:row + 1, None]]))
        assert torch.allclose(got[row:row + 1], want, atol=1e-5)


def test_expression_scale_zero_is_plain_cross_attention():
    attn = _attention(64, cross_dim=48)
    ctx = AttentionContext(expression_tokens=torch.randn(2, 4, 48), expression_scale=0.0)
    proc = ExpressionCrossAttnProcessor(ctx, 64, 48)
    hidden, prompt = torch.randn(2, 10, 64), torch.randn(2, 7, 48)
    want = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=prompt)
    assert torch.allclose(proc(attn, hidden, encoder_hidden_states=prompt), want, atol=1e-6)


@pytest.mark.parametrize("per_frame", [False, True])
def test_reference_attention_is_attention_over_concatenated_tokens(per_frame):
    attn = _attention(64)
    batch = 3
    reference = torch.randn(batch if per_frame else 1, 12, 64)
    bank = ReferenceBank({"layer": reference})
    ctx = AttentionContext(reference=bank, reference_rows=slice(batch, 2 * batch))  # CFG: [uncond, cond]
    proc = ReferenceSelfAttnProcessor("layer", ctx)
    hidden = torch.randn(2 * batch, 16, 64)
    got = proc(attn, hidden)
    plain = AttnProcessor2_0()
    assert torch.allclose(got[:batch], plain(attn, hidden[:batch]), atol=1e-6)  # unconditional rows: plain
    for row in range(batch):
        ref = reference[row if per_frame else 0][None]
        own = hidden[batch + row][None]
        want = plain(attn, own, encoder_hidden_states=torch.cat([own, ref], dim=1))
        assert torch.allclose(got[batch + row][None], want, atol=1e-5)


def test_cached_reference_keys_values_equal_fresh_ones():
    attn = _attention(64)
    reference = torch.randn(1, 12, 64)
    hidden = torch.randn(2, 16, 64)
    cached = ReferenceBank({"l": reference}, cache_kv=True)
    fresh = ReferenceBank({"l": reference}, cache_kv=False)
    proc_c = ReferenceSelfAttnProcessor("l", AttentionContext(reference=cached, reference_rows=slice(0, 2)))
    proc_f = ReferenceSelfAttnProcessor("l", AttentionContext(reference=fresh, reference_rows=slice(0, 2)))
    first = proc_c(attn, hidden)
    assert "l" in cached._kv and not fresh._kv
    assert torch.equal(proc_c(attn, hidden), first)
    assert torch.allclose(proc_f(attn, hidden), first, atol=1e-6)


def test_recording_pass_stores_the_layer_input_and_attends_plainly():
    attn = _attention(64)
    recording = {}
    ctx = AttentionContext(recording=recording, reference=ReferenceBank({"l": torch.randn(1, 3, 64)}),
                           reference_rows=slice(0, 2))
    hidden = torch.randn(2, 9, 64)
    out = ReferenceSelfAttnProcessor("l", ctx)(attn, hidden)
    assert torch.equal(recording["l"], hidden)
    assert torch.allclose(out, AttnProcessor2_0()(attn, hidden), atol=1e-6)


def test_cross_attention_keys_values_are_projected_once_per_loop():
    attn = _attention(64, cross_dim=48)
    tokens = torch.randn(2, 4, 48)
    fresh_ctx = AttentionContext(expression_tokens=tokens, expression_scale=0.9)
    prepared = ExpressionCrossAttnProcessor(AttentionContext(), 64, 48, name="layer")
    fresh = ExpressionCrossAttnProcessor(fresh_ctx, 64, 48, name="layer")
    fresh.load_state_dict(prepared.state_dict())
    prompt = torch.randn(2, 7, 48)
    calls = []
    handle = attn.to_k.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        prepared.prepare(attn, prompt, tokens, scale=0.9)  # once per loop: the scale goes into the values
        for step in range(3):  # the latents change every step, the prompt and expression tokens do not
            hidden = torch.randn(2, 10, 64)
            assert torch.allclose(prepared(attn, hidden, encoder_hidden_states=prompt),
                                  fresh(attn, hidden, encoder_hidden_states=prompt), atol=1e-6)
    finally:
        handle.remove()
    assert len(calls) == 1 + 3  # prepared: projected before the loop only; fresh: every step
    prepared.prepare(attn, None)
    assert prepared.prompt_kv is None and prepared.expression_kv is None
