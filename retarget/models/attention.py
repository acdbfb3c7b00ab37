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

Per-call state comes from one shared :class:`AttentionContext` object, not from call kwargs (diffusers drops
unknown kwargs, and ``load_ip_adapter`` rebuilds processors). For a denoising loop, whose prompt, expression
tokens and reference do not change from step to step, each processor is instead *prepared* with tensors
computed once before the loop (``prepare``): the forward pass then reads only tensors and fixed attributes,
which ``torch.compile`` traces into one graph that later clips reuse without recompiling.
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
    """What the processors of one UNet need for the current forward pass (the general, per-call route).

    ``expression_tokens``: ``[batch, T, C]``, one row per UNet batch row, or None (adapter off).
    ``expression_scale``: weight of the expression branch; 0 skips it.
    ``reference``: the reference bank read by ``attn1`` layers, or None (no reference attention).
    ``reference_rows``: the slice of batch rows that attend to the reference (the conditional half).
    ``recording``: during a reference pass, the dict the ``attn1`` layers write their input into.

    A denoising loop whose conditioning is fixed from step to step instead *prepares* each processor (its
    ``prepare`` method) with tensors computed once before the loop; a prepared processor ignores the context
    except for ``recording``. That keeps the UNet forward free of dictionary look-ups and Python numbers that
    change between calls, so ``torch.compile`` traces it once.
    """

    expression_tokens: torch.Tensor | None = None
    expression_scale: float = 1.0
    reference: ReferenceBank | None = None
    reference_rows: slice | None = None
    recording: dict[str, torch.Tensor] | None = field(default=None, repr=False)


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


def lora_active(layer) -> bool:
    """Whether a (possibly peft-wrapped) projection currently adds a LoRA term to its base layer's output."""
    return not getattr(layer, "disable_adapters", True) and not getattr(layer, "merged", False) \
        and bool(getattr(layer, "active_adapters", ()))


class ReferenceSelfAttnProcessor:
    """``attn1`` processor: records reference tokens, or attends over ``[own, reference]`` tokens.

    Prepared state (see :meth:`prepare`): ``reference_kv`` (keys and values ``[R, N, inner]`` of the reference
    tokens under the layer's current weights, R = 1 or the number of reference rows) and ``reference_rows``
    (``(start, stop)`` batch rows that attend to them). ``qkv_weight``: when set (see
    :func:`fuse_self_attention_projections`), the ``[3 * inner, dim]`` weight whose row blocks *are* the
    ``to_q``/``to_k``/``to_v`` weights, so the three projections run as one matmul; it is used only while no LoRA
    adds to those projections.
    """

    def __init__(self, name: str, context: AttentionContext):
        self.name = name
        self.context = context
        self.qkv_weight: torch.Tensor | None = None
        self.reference_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reference_rows: tuple[int, int] | None = None

    def prepare(self, reference_kv: tuple[torch.Tensor, torch.Tensor] | None, rows: tuple[int, int] | None) -> None:
        """Fix the reference keys/values and the rows that read them for the coming forward passes (None: none)."""
        self.reference_kv, self.reference_rows = reference_kv, rows if reference_kv is not None else None

    def _project(self, attn, hidden_states):
        if self.qkv_weight is not None and not lora_active(attn.to_q):
            return F.linear(hidden_states, self.qkv_weight).chunk(3, dim=-1)
        return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        _check_plain(attn, attention_mask)
        ctx = self.context
        recording = ctx.recording is not None
        if recording:
            ctx.recording[self.name] = hidden_states.detach()
        query, key, value = self._project(attn, hidden_states)
        if recording:
            return _output(attn, attention(query, key, value, attn.heads))
        if self.reference_kv is not None:
            (ref_key, ref_value), (start, stop) = self.reference_kv, self.reference_rows
        elif ctx.reference is not None and ctx.reference_rows is not None:
            start, stop, _ = ctx.reference_rows.indices(hidden_states.shape[0])
            ref_key, ref_value = ctx.reference.key_value(self.name, attn)
        else:
            return _output(attn, attention(query, key, value, attn.heads))

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
    Prepared state (see :meth:`prepare`): the keys/values of the prompt and of the expression tokens, projected once
    for a denoising loop, with the expression scale folded into the expression values (attention is linear in
    its values, so ``scale * Attn(Q, K, V) == Attn(Q, K, scale * V)``).
    """

    def __init__(self, context: AttentionContext, hidden_size: int, token_dim: int, name: str = ""):
        super().__init__()
        self.context = context
        self.name = name
        self.to_k_ip = nn.Linear(token_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(token_dim, hidden_size, bias=False)
        self.prompt_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.expression_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, attn, prompts: torch.Tensor | None, tokens: torch.Tensor | None = None,
                scale: float = 1.0) -> None:
        """Project ``prompts [batch, L, C]`` and expression ``tokens [batch, T, C]`` (scaled by ``scale``) once
        for the coming forward passes; ``prompts`` None clears the prepared state (back to the per-call route)."""
        if prompts is None:
            self.prompt_kv = self.expression_kv = None
            return
        self.prompt_kv = (attn.to_k(prompts), attn.to_v(prompts))
        self.expression_kv = None
        if tokens is not None:
            if tokens.shape[0] != prompts.shape[0]:
                raise ValueError(f"{tokens.shape[0]} expression rows for {prompts.shape[0]} prompt rows")
            self.expression_kv = (self.to_k_ip(tokens), self.to_v_ip(tokens) * scale)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        _check_plain(attn, attention_mask)
        query = attn.to_q(hidden_states)
        scale = None  # prepared: folded into the expression values
        if self.prompt_kv is not None:
            (key, value), expression_kv = self.prompt_kv, self.expression_kv
        else:
            ctx = self.context
            context_states = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            key, value = attn.to_k(context_states), attn.to_v(context_states)
            tokens, expression_kv, scale = ctx.expression_tokens, None, ctx.expression_scale
            if tokens is not None and scale != 0:
                if tokens.shape[0] != hidden_states.shape[0]:
                    raise ValueError(f"{tokens.shape[0]} expression rows for a batch of {hidden_states.shape[0]}")
                expression_kv = (self.to_k_ip(tokens), self.to_v_ip(tokens))
        out = attention(query, key, value, attn.heads)
        if expression_kv is not None:
            branch = attention(query, *expression_kv, attn.heads)
            out = out + (branch if scale is None else scale * branch)
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


def fuse_self_attention_projections(unet) -> int:
    """Let every ``attn1`` with a :class:`ReferenceSelfAttnProcessor` project queries, keys and values in one matmul.

    The ``to_q``/``to_k``/``to_v`` weights (of the base layers, under any peft LoRA wrapper) are moved into one
    ``[3 * inner, dim]`` tensor and become views of it, so anything that later writes those weights in place
    (LoRA folding, restoring) updates the fused weight too; the math is unchanged. Call after the UNet has its
    final device, dtype and memory format (a later ``.to()`` would copy the weights out of the fused tensor).
    Layers with biases are left alone. Returns the number of fused layers; calling again is a no-op.
    """
    count = 0
    for module in unet.modules():
        processor = getattr(module, "processor", None)
        if not isinstance(processor, ReferenceSelfAttnProcessor) or processor.qkv_weight is not None:
            continue
        linears = [getattr(module, n) for n in ("to_q", "to_k", "to_v")]
        linears = [layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer for layer in linears]
        if any(layer.bias is not None for layer in linears):
            continue
        with torch.no_grad():
            fused = torch.cat([layer.weight.detach() for layer in linears])
            for layer, part in zip(linears, fused.split([layer.out_features for layer in linears])):
                layer.weight.data = part
        processor.qkv_weight = fused
        count += 1
    return count
