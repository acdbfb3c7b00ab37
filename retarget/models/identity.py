"""The Arc2Face identity encoder: an ArcFace embedding written into the prompt ``photo of a id person``."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

ID_PROMPT = "photo of a id person"
ID_TOKEN = "id"
ARCFACE_DIM = 512


class IdPromptEncoder:
    """Turns raw ArcFace vectors into Arc2Face prompt embeddings.

    The embedding is L2-normalised, zero-padded to the encoder width, and written over the token embedding of
    ``id`` in the fixed prompt (77 tokens, padded); the CLIP text encoder turns that into ``[B, 77, width]``.
    The empty prompt, encoded normally, is the unconditional branch of classifier-free guidance.
    """

    def __init__(self, text_encoder, tokenizer):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        ids = self._tokenize(ID_PROMPT)
        id_token = tokenizer.encode(ID_TOKEN, add_special_tokens=False)
        if len(id_token) != 1:
            raise ValueError(f"the tokenizer splits '{ID_TOKEN}' into {len(id_token)} tokens")
        self.prompt_ids = ids
        self.id_positions = ids[0] == id_token[0]
        if int(self.id_positions.sum()) != 1:
            raise ValueError(f"'{ID_TOKEN}' appears {int(self.id_positions.sum())} times in the tokenized prompt")
        if text_encoder.config.hidden_size < ARCFACE_DIM:
            raise ValueError(f"the identity encoder is {text_encoder.config.hidden_size} wide, less than {ARCFACE_DIM}")

    def _tokenize(self, text: str) -> torch.Tensor:
        return self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @contextlib.contextmanager
    def _identity_tokens(self, padded: torch.Tensor):
        """Replace the ``id`` token's embedding with ``padded [B, width]`` for the duration of one forward."""
        positions = self.id_positions.to(padded.device)

        def hook(module, args, output):
            output = output.clone()
            output[:, positions] = padded.to(output.dtype)[:, None]
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def encode(self, id_embeds: torch.Tensor) -> torch.Tensor:
        """``id_embeds [B, 512]`` raw ArcFace vectors -> prompt embeddings ``[B, 77, width]``."""
        if id_embeds.ndim == 1:
            id_embeds = id_embeds[None]
        if id_embeds.ndim != 2 or id_embeds.shape[1] != ARCFACE_DIM:
            raise ValueError(f"id_embeds must be [{ARCFACE_DIM}] or [B, {ARCFACE_DIM}], got {list(id_embeds.shape)}")
        device = self.device
        normed = F.normalize(id_embeds.to(device=device, dtype=torch.float32), dim=-1)
        padded = F.pad(normed, (0, self.text_encoder.config.hidden_size - ARCFACE_DIM))
        ids = self.prompt_ids.to(device).repeat(len(id_embeds), 1)
        with self._identity_tokens(padded):
            return self.text_encoder(input_ids=ids)[0]

    @torch.no_grad()
    def encode_empty(self) -> torch.Tensor:
        """The empty prompt through the encoder: ``[1, 77, width]``."""
        return self.text_encoder(input_ids=self._tokenize("").to(self.device))[0]
