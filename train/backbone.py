"""The frozen parts both stages train against: Arc2Face UNet, identity encoder, VAE and the noise schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from retarget.errors import WeightsError
from retarget.models.identity import IdPromptEncoder
from retarget.models.loading import (
    load_identity_encoder_model,
    load_scheduler_config,
    load_tokenizer,
    load_unet,
    load_vae,
    resolve_base_model,
)


@dataclass
class Backbone:
    """Loaded, frozen (``requires_grad`` False, eval mode) Arc2Face components plus the training noise schedule.

    ``noise_scheduler`` is a ``DDPMScheduler`` built from the base model's scheduler config (the SD1.5 schedule:
    1000 steps, scaled-linear betas, epsilon prediction).
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    identity_encoder: IdPromptEncoder
    noise_scheduler: object

    @classmethod
    def load(cls, models_dir, base_model) -> "Backbone":
        """Load from a published ``models/`` folder and an SD1.5 base (folder or hub id)."""
        from diffusers import DDPMScheduler

        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise WeightsError(f"models folder not found: {models_dir}")
        base_dir = resolve_base_model(base_model)
        unet = load_unet(models_dir / "arc2face")
        if unet.config.cross_attention_dim is None:
            raise WeightsError(f"{models_dir / 'arc2face'}: the UNet has no cross-attention")
        text_encoder = load_identity_encoder_model(models_dir / "encoder")
        if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
            raise WeightsError(
                f"{models_dir / 'encoder'}: the identity encoder is {text_encoder.config.hidden_size}-d, the UNet "
                f"expects {unet.config.cross_attention_dim}-d prompt embeddings")
        vae = load_vae(base_dir / "vae")
        tokenizer = load_tokenizer(base_dir / "tokenizer")
        noise_scheduler = DDPMScheduler.from_config(load_scheduler_config(base_dir / "scheduler"))
        backbone = cls(unet, vae, text_encoder, IdPromptEncoder(text_encoder, tokenizer), noise_scheduler)
        for module in backbone.frozen_modules().values():
            module.eval().requires_grad_(False)
        return backbone

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    @property
    def image_size(self) -> int:
        """The resolution the UNet was built for (sample size x VAE downsampling)."""
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, sample: bool = True, generator=None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> scaled latents (a posterior sample, or its mean)."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels.to(vae_dtype)).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mean
        return latents * self.vae.config.scaling_factor


def check_trainable(module: nn.Module, trainable: set[str]) -> None:
    """Raise RuntimeError unless exactly the parameters named in ``trainable`` require gradients."""
    wrong = [name for name, p in module.named_parameters() if p.requires_grad != (name in trainable)]
    if wrong:
        state = "trainable" if dict(module.named_parameters())[wrong[0]].requires_grad else "frozen"
        raise RuntimeError(f"{len(wrong)} parameters have the wrong requires_grad, e.g. '{wrong[0]}' is {state}")
