"""The Expression Adapter's projection: 55 FLAME values to a few cross-attention tokens."""

from __future__ import annotations

import torch
from torch import nn

#: Layout of one expression vector (SMIRK order): 50 expression, 2 eyelid, 3 jaw values.
EXPRESSION_DIM, EYELID_DIM, JAW_DIM = 50, 2, 3
NUM_EXPRESSION_VALUES = EXPRESSION_DIM + EYELID_DIM + JAW_DIM


class ExpressionProjection(nn.Module):
    """``Linear(n_values, hidden) -> GELU -> Linear(hidden, tokens*dim) -> reshape -> LayerNorm(dim)``.

    The IP-Adapter FaceID-style MLP of the published ``exp_adapter.bin`` (``image_proj``: ``proj.0``, ``proj.2``,
    ``norm``). Input ``[B, n_values]`` float; output ``[B, tokens, dim]`` cross-attention tokens.
    """

    def __init__(self, n_values: int = NUM_EXPRESSION_VALUES, hidden: int = 2 * NUM_EXPRESSION_VALUES,
                 tokens: int = 4, dim: int = 768):
        super().__init__()
        self.n_values, self.tokens, self.dim = n_values, tokens, dim
        self.proj = nn.Sequential(nn.Linear(n_values, hidden), nn.GELU(), nn.Linear(hidden, tokens * dim))
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ExpressionProjection":
        """Build with sizes read from a published ``image_proj`` state dict and load it strictly."""
        hidden, n_values = state["proj.0.weight"].shape
        dim = state["norm.weight"].shape[0]
        tokens = state["proj.2.weight"].shape[0] // dim
        module = cls(n_values, hidden, tokens, dim)
        module.load_state_dict(state, strict=True)
        return module

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        out = self.proj(values)
        return self.norm(out.reshape(values.shape[0], self.tokens, self.dim))
