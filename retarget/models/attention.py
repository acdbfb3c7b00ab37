"""Attention processors for the Expression Adapter and the Reference Adapter.

diffusers' attention processors are the extension point: the Arc2Face UNet keeps its own modules and weights,
and these processors change what its attention layers compute.

* :class:`ExpressionCrossAttnProcessor` (every ``attn2``): IP-Adapter-style decoupled cross-attention,
  ``Attn(Q, K_id, V_id) + scale * Attn(Q, K_exp, V_exp)`` before the output projection, with its own
  ``to_k_ip``/``to_v_ip`` projections. Expression tokens are per batch row, so every frame of a batch gets its
  own expression (unlike the stock pipeline, which mixes them).
* :class:`ReferenceSelfAttnProcessor` (every ``attn1``): in a *recording* pass it stores its input (the normed
  hidden states of the transformer block) as the reference tokens of its layer; in a render pass the rows listed
  in ``context.reference_rows`` (the conditional half of the CFG batch) attend over
  ``[own tokens, reference tokens]`` while the other rows do plain self-attention.

All per-call state lives on one shared :class:`AttentionContext` object, not in call kwargs (diffusers drops
unknown kwargs, and ``load_ip_adapter`` rebuilds processors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceBank:
    """Reference tokens of one reference pass, per ``attn1`` layer, plus a cache of their keys and values.

    ``tokens[name]`` is ``[R, N, C]`` where ``R`` is 1 (one reference shared by every frame) or the number of
    conditional rows (one reference per frame). The keys/values of the reference tokens depend only on the
    layer's ``to_k``/``to_v`` (including the reference LoRA at its current scale), so with ``cache_kv`` they are
    computed once per layer and reused by every denoising step and batch until :meth:`invalidate` is called
    (the pipeline does that when the LoRA scale changes). Training leaves ``cache_kv`` off, as the LoRA changes.
    """

    def __init__(self, tokens: dict[str, torch.Tensor], cache_kv: bool = True):
        self.tokens = tokens
        self.cache_kv = cache_kv
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_references(self) -> int:
        return next(iter(self.tokens.values())).shape[0]

    def invalidate(self) -> None:
        self._kv.clear()

    def key_value(self, name: str, attn) -> tuple[torch.Tensor, torch.Tensor]:
        if name in self._kv:
            return self._kv[name]
        tokens = self.tokens[name]
        kv = (attn.to_k(tokens), attn.to_v(tokens))
        if self.cache_kv:
            self._kv[name] = kv
        return kv

    def to(self, device=None, dtype=None) -> "ReferenceBank":
        self.tokens = {k: v.to(device=device, dtype=dtype) for k, v in self.tokens.items()}
        self.invalidate()
        return self


@dataclass
class AttentionContext:
    """What the processors of one UNet need for the current forward pass.

    ``expression_tokens``: ``[batch, T, C]``, one row per UNet batch row, or None (adapter off).
    ``expression_scale``: weight of the expression branch; 0 skips it.
    ``reference``: the reference bank read by ``attn1`` layers, or None (no reference attention).
    ``reference_rows``: the slice of batch rows that attend to the reference (the conditional half).
    ``recording``: during a reference pass, the dict the ``attn1`` layers write their input into.
    ``cross_kv``: when a dict, the ``attn2`` layers keep the keys/values of the prompt and expression tokens in it
    by layer name. The pipeline sets it for one denoising loop, in which those inputs do not change from step to
    step, so they are projected once per call instead of once per step; None (training) projects every time.
    """

    expression_tokens: torch.Tensor | None = None
    expression_scale: float = 1.0
    reference: ReferenceBank | None = None
    reference_rows: slice | None = None
    recording: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    cross_kv: dict[str, tuple] | None = field(default=None, repr=False)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, inner = x.shape
    return x.view(batch, length, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention on ``[B, L, inner]`` projections (SDPA kernels)."""
    out = F.scaled_dot_product_attention(_split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads))
    return _merge_heads(out).to(query.dtype)


def _check_plain(attn, attention_mask) -> None:
    # The SD1.5 transformer blocks use none of these; refuse rather than silently compute something else.
    if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None \
            or attn.residual_connection or attn.norm_q is not None or attn.norm_cross:
        raise ValueError("retarget's attention processors support the Stable Diffusion 1.5 transformer blocks only")


def _output(attn, hidden_states: torch.Tensor) -> torch.Tensor:
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    return hidden_states / attn.rescale_output_factor


class ReferenceSelfAttnProcessor:
    """``attn1`` processor: records reference tokens, or attends over ``[own, reference]`` tokens."""

    def __init__(self, name: str, context: AttentionContext):
        self.name = name
        self.context = context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        _check_plain(attn, attention_mask)
        ctx = self.context
        if ctx.recording is not None:
            ctx.recording[self.name] = hidden_states.detach()
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        bank, rows = ctx.reference, ctx.reference_rows
        if bank is None or rows is None or ctx.recording is not None:
            return _output(attn, attention(query, key, value, attn.heads))

        start, stop, _ = rows.indices(hidden_states.shape[0])
        ref_key, ref_value = bank.key_value(self.name, attn)
        n_rows = stop - start
        if ref_key.shape[0] not in (1, n_rows):
            raise ValueError(f"{ref_key.shape[0]} references for {n_rows} conditional rows")
        ref_key = ref_key.expand(n_rows, -1, -1)
        ref_value = ref_value.expand(n_rows, -1, -1)
        with_ref = attention(
            query[start:stop],
            torch.cat([key[start:stop], ref_key], dim=1),
            torch.cat([value[start:stop], ref_value], dim=1),
            attn.heads,
        )
        if n_rows == hidden_states.shape[0]:
            return _output(attn, with_ref)
        parts = []
        if start > 0:
            parts.append(attention(query[:start], key[:start], value[:start], attn.heads))
        parts.append(with_ref)
        if stop < hidden_states.shape[0]:
            parts.append(attention(query[stop:], key[stop:], value[stop:], attn.heads))
        return _output(attn, torch.cat(parts, dim=0))


class ExpressionCrossAttnProcessor(nn.Module):
    """``attn2`` processor: identity cross-attention plus the scaled expression-token branch.

    ``to_k_ip``/``to_v_ip``: ``Linear(token_dim -> hidden_size, bias=False)``, the adapter's trained projections.
    """

    def __init__(self, context: AttentionContext, hidden_size: int, token_dim: int, name: str = ""):
        super().__init__()
        self.context = context
        self.name = name
        self.to_k_ip = nn.Linear(token_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(token_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        _check_plain(attn, attention_mask)
        ctx = self.context
        query = attn.to_q(hidden_states)
        cache = ctx.cross_kv
        if cache is not None and self.name in cache:
            key, value, expression_kv = cache[self.name]
        else:
            context_states = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            key, value = attn.to_k(context_states), attn.to_v(context_states)
            tokens = ctx.expression_tokens
            expression_kv = None
            if tokens is not None and ctx.expression_scale != 0:
                if tokens.shape[0] != hidden_states.shape[0]:
                    raise ValueError(f"{tokens.shape[0]} expression rows for a batch of {hidden_states.shape[0]}")
                expression_kv = (self.to_k_ip(tokens), self.to_v_ip(tokens))
            if cache is not None:
                cache[self.name] = (key, value, expression_kv)
        out = attention(query, key, value, attn.heads)
        if expression_kv is not None:
            out = out + ctx.expression_scale * attention(query, *expression_kv, attn.heads)
        return _output(attn, out)


def cross_attention_layers(unet) -> list[tuple[str, object]]:
    """``(processor name, Attention module)`` of every ``attn2`` layer, in ``unet.attn_processors`` order.

    That order (down blocks, up blocks, mid block) numbers the published ``ip_adapter`` keys: the i-th layer
    here owns ``f"{2 * i + 1}.to_k_ip.weight"``.
    """
    modules = dict(unet.named_modules())
    return [
        (name, modules[name[: -len(".processor")]])
        for name in unet.attn_processors
        if not name.endswith("attn1.processor")
    ]


def install_processors(unet, context: AttentionContext, token_dim: int) -> dict[str, ExpressionCrossAttnProcessor]:
    """Install the expression and reference processors on every attention layer of ``unet``.

    Returns the expression processors by name (their ``to_k_ip``/``to_v_ip`` are freshly initialised; load or
    train them afterwards). The UNet's own weights are untouched.
    """
    processors, expression = {}, {}
    cross = dict(cross_attention_layers(unet))
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = ReferenceSelfAttnProcessor(name, context)
        else:
            hidden = cross[name].to_k.out_features
            expression[name] = ExpressionCrossAttnProcessor(context, hidden, token_dim, name)
            processors[name] = expression[name]
    unet.set_attn_processor(processors)
    return expression
