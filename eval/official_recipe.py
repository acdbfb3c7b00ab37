"""The published per-image recipe, rebuilt from stock diffusers parts: the independent reference for tests
and the baseline of the throughput benchmark.

One frame per call, as the release's demo does: ``StableDiffusionPipeline`` with the Arc2Face UNet and
identity encoder, the expression adapter loaded with ``load_ip_adapter``, the reference LoRA with
``load_lora_weights``, and a separate reference UNet whose ``attn1`` inputs are captured with forward hooks and
concatenated (conditional half only) by a processor that calls diffusers' own ``AttnProcessor2_0``. The
reference image is encoded with the VAE latent mean (the release samples; the mean makes it deterministic).
Nothing here is shared with :mod:`retarget.pipeline` except the strict file loaders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retarget.models.loading import (
    ModelFiles,
    load_identity_encoder_model,
    load_scheduler_config,
    load_tokenizer,
    load_unet,
    load_vae,
)


class _ConcatReferenceProcessor:
    """attn1 with reference tokens appended to the keys/values of the conditional half (rows ``n:``)."""

    def __init__(self, bank: dict, name: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.plain = AttnProcessor2_0()
        self.bank, self.name = bank, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        reference = self.bank.get(self.name)
        if reference is None:
            return self.plain(attn, hidden_states)
        n = hidden_states.shape[0] - reference.shape[0]
        uncond = self.plain(attn, hidden_states[:n]) if n > 0 else hidden_states[:0]
        cond_rows = hidden_states[n:]
        cond = self.plain(attn, cond_rows, encoder_hidden_states=torch.cat([cond_rows, reference], dim=1))
        return torch.cat([uncond, cond])


class OfficialRecipe:
    """Per-image renderer following the release's demo with stock diffusers components."""

    def __init__(self, models_dir, base_model, device="cpu", dtype=torch.float32):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        files = ModelFiles.locate(models_dir, base_model)
        self.device, self.dtype = torch.device(device), dtype
        unet = load_unet(files.unet_dir)
        self.pipe = StableDiffusionPipeline(
            vae=load_vae(files.base_dir / "vae"),
            text_encoder=load_identity_encoder_model(files.encoder_dir),
            tokenizer=load_tokenizer(files.base_dir / "tokenizer"),
            unet=unet,
            scheduler=DPMSolverMultistepScheduler.from_config(load_scheduler_config(files.base_dir / "scheduler")),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        ).to(self.device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        models_dir = Path(models_dir)
        self.pipe.load_ip_adapter(str(models_dir), subfolder="exp_adapter", weight_name="exp_adapter.bin",
                                  image_encoder_folder=None)
        self.has_reference = files.reference_lora is not None
        self.bank: dict[str, torch.Tensor] = {}
        if self.has_reference:
            self.pipe.load_lora_weights(str(models_dir / "ref_adapter"), weight_name="pytorch_lora_weights.safetensors",
                                        adapter_name="ref")
            # Reference attention goes on attn1 after load_ip_adapter (which rebuilds processors).
            procs = dict(self.pipe.unet.attn_processors)
            for name in procs:
                if name.endswith("attn1.processor"):
                    procs[name] = _ConcatReferenceProcessor(self.bank, name)
            self.pipe.unet.set_attn_processor(procs)
            self.reference_unet = load_unet(files.unet_dir).to(self.device, dtype)
            self._captured: dict[str, torch.Tensor] = {}
            for name, module in self.reference_unet.named_modules():
                if name.endswith("attn1"):
                    module.register_forward_pre_hook(self._capture(name + ".processor"), with_kwargs=True)

    def _capture(self, name):
        def hook(module, args, kwargs):
            self._captured[name] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def project_face_embs(self, id_embed: torch.Tensor) -> torch.Tensor:
        """ArcFace ``[1, 512]`` -> prompt embeddings, through the encoder's embedding/encoder/final-norm stack."""
        te, tok = self.pipe.text_encoder, self.pipe.tokenizer
        ids = tok("photo of a id person", padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        id_token = tok.encode("id", add_special_tokens=False)[0]
        emb = F.normalize(id_embed.float(), dim=-1).to(self.device, self.dtype)
        emb = F.pad(emb, (0, te.config.hidden_size - emb.shape[-1]))
        token_embs = te.get_input_embeddings()(ids)
        token_embs[ids == id_token] = emb
        hidden = te.embeddings(input_ids=ids, inputs_embeds=token_embs)
        length = ids.shape[1]
        causal = torch.full((length, length), float("-inf"), device=self.device, dtype=hidden.dtype).triu(1)
        hidden = te.encoder(inputs_embeds=hidden, attention_mask=causal[None, None]).last_hidden_state
        return te.final_layer_norm(hidden)

    @torch.no_grad()
    def render_one(self, id_embed, expression, reference_image=None, reference_scale=0.8, expression_scale=1.0,
                   num_inference_steps=25, guidance_scale=3.0, latents=None) -> np.ndarray:
        """One frame: ``[H, W, 3]`` float in [0, 1]. ``latents``: ``[1, 4, h, w]``."""
        pipe = self.pipe
        id_embed = torch.as_tensor(id_embed).reshape(1, -1)
        prompt_embeds = self.project_face_embs(id_embed)
        exp = torch.as_tensor(expression, dtype=self.dtype).reshape(1, 1, -1).to(self.device)
        image_embeds = torch.cat([torch.zeros_like(exp), exp]) if guidance_scale > 1 else exp
        pipe.set_ip_adapter_scale(expression_scale)
        self.bank.clear()
        if self.has_reference:
            pipe.set_adapters("ref", reference_scale if reference_image is not None else 0.0)
        if reference_image is not None:
            pixels = torch.as_tensor(np.asarray(reference_image), dtype=torch.float32).permute(2, 0, 1)[None]
            pixels = (pixels / 255 * 2 - 1).to(self.device, self.dtype)
            ref_latent = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            rows = 2 if guidance_scale > 1 else 1
            self._captured.clear()
            self.reference_unet(ref_latent.repeat(rows, 1, 1, 1), torch.zeros(rows, device=self.device).long(),
                                prompt_embeds.repeat(rows, 1, 1), return_dict=False)
            # Conditional rows of the CFG batch read the reference (the last row of the recorded bank).
            self.bank.update({k: v[-1:] for k, v in self._captured.items()})
        out = pipe(prompt_embeds=prompt_embeds, ip_adapter_image_embeds=[image_embeds],
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   latents=None if latents is None else torch.as_tensor(latents).to(self.device, self.dtype),
                   output_type="np")
        self.bank.clear()
        return out.images[0]
