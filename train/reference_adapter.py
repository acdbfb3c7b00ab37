"""Stage 2: train the Reference Adapter (LoRA on every ``attn1`` of the denoising UNet) with reference pairs.

::

    python -m train.reference_adapter --data DATA --models M --base-model B --exp-adapter FILE --output OUT

Each item pairs two different frames of one clip at most ``--window`` seconds apart: the reference frame gives
the identity and the reference image, the target frame gives the expression and the image to denoise. Per step
the frozen Arc2Face UNet (the same UNet with the LoRA switched off and no expression tokens) runs once on the VAE
latent mean of each reference at timestep 0, recording every ``attn1`` input; the denoising pass then lets the
conditional rows attend over ``[own, reference]`` tokens, exactly as at inference. Only the LoRA (rank
``--rank``, alpha = rank, on ``to_q/to_k/to_v/to_out.0``) trains; the expression adapter from ``--exp-adapter``
and the backbone stay frozen. Writes ``OUT/ref_adapter/pytorch_lora_weights.safetensors``.

Condition dropout: with probability ``--condition-dropout`` (0.1) a sample trains the unconditional branch of
inference: empty-prompt identity, zero expression vector, no reference attention, LoRA still on (inference applies
the LoRA to both halves of the CFG batch, so it must learn to leave the unconditional prediction intact).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

from retarget.errors import InputError
from retarget.models.attention import AttentionContext, ReferenceBank
from retarget.models.formats import write_reference_lora
from retarget.models.loading import REFERENCE_ADAPTER_NAME, load_expression_adapter, reference_lora_modules

from .backbone import Backbone, check_trainable
from .cli import run_command
from .data import FaceSamples, ReferencePairs
from .loop import TrainingOptions, add_common_arguments, run_training, validate
from .objective import draw_unconditional, noise_prediction_loss

STAGE = "reference_adapter"
OUTPUT_FILE = Path("ref_adapter") / "pytorch_lora_weights.safetensors"


class ReferenceAdapterTraining(nn.Module):
    """Frozen Arc2Face + frozen expression adapter + trainable reference LoRA; ``forward(batch)`` is the loss.

    ``batch``: ``pixels`` (target) ``[B, 3, S, S]`` and ``reference_pixels`` in [-1, 1], ``identity [B, 512]``
    (of the reference), ``expression [B, 55]`` (of the target).
    """

    def __init__(self, backbone: Backbone, expression_adapter: Path, rank: int = 128, condition_dropout: float = 0.1):
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().__init__()
        if rank <= 0:
            raise InputError(f"--rank must be positive, got {rank}")
        self.backbone = backbone
        self.unet, self.vae, self.text_encoder = backbone.unet, backbone.vae, backbone.text_encoder
        self.context = AttentionContext()
        self.condition_dropout = float(condition_dropout)
        self.rank = int(rank)
        self.projection = load_expression_adapter(self.unet, expression_adapter, self.context)
        self.lora_modules = reference_lora_modules(self.unet)
        config = LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, init_lora_weights=True,
                            target_modules=self.lora_modules)
        self.unet.add_adapter(config, adapter_name=REFERENCE_ADAPTER_NAME)
        self._lora_layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        check_trainable(self, set(self.trainable_state_dict()))
        self.register_buffer("empty_prompt", backbone.identity_encoder.encode_empty(), persistent=False)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors by parameter name (what a checkpoint stores)."""
        return {n: p for n, p in self.named_parameters()
                if f"lora_A.{REFERENCE_ADAPTER_NAME}." in n or f"lora_B.{REFERENCE_ADAPTER_NAME}." in n}

    def lora_layers(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module path: (down [r, in], up [out, r])}`` for the published file."""
        modules = dict(self.unet.named_modules())
        return {name: (modules[name].lora_A[REFERENCE_ADAPTER_NAME].weight,
                       modules[name].lora_B[REFERENCE_ADAPTER_NAME].weight) for name in self.lora_modules}

    @contextlib.contextmanager
    def lora_disabled(self):
        """The plain Arc2Face UNet (the reference UNet) for the duration of the block."""
        for layer in self._lora_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._lora_layers:
                layer.enable_adapters(True)

    @torch.no_grad()
    def reference_bank(self, reference_latents: torch.Tensor, prompts: torch.Tensor) -> ReferenceBank:
        """Run the reference pass (LoRA off, no expression, timestep 0) and return its recorded tokens."""
        ctx = self.context
        recording: dict[str, torch.Tensor] = {}
        ctx.expression_tokens, ctx.reference, ctx.recording = None, None, recording
        unet_dtype = next(self.unet.parameters()).dtype
        try:
            with self.lora_disabled():
                timestep = torch.zeros(len(reference_latents), dtype=torch.long, device=reference_latents.device)
                self.unet(reference_latents.to(unet_dtype), timestep, encoder_hidden_states=prompts.to(unet_dtype),
                          return_dict=False)
        finally:
            ctx.recording = None
        return ReferenceBank(recording, cache_kv=False)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        drop = draw_unconditional(len(batch["pixels"]), self.condition_dropout, batch["pixels"].device, generator)
        # Unconditional rows first: the conditional rows that attend to the reference are then one slice.
        order = torch.cat([torch.nonzero(drop).flatten(), torch.nonzero(~drop).flatten()])
        n_uncond, size = int(drop.sum()), len(order)
        batch = {k: v[order] for k, v in batch.items()}
        latents = self.backbone.encode_latents(batch["pixels"], generator=generator)
        prompts = self.backbone.identity_encoder.encode(batch["identity"])
        prompts[:n_uncond] = self.empty_prompt.to(prompts.dtype)
        expression = batch["expression"].float()
        expression[:n_uncond] = 0
        ctx = self.context
        try:
            if n_uncond < size:
                reference = self.backbone.encode_latents(batch["reference_pixels"][n_uncond:], sample=False)
                ctx.reference = self.reference_bank(reference, prompts[n_uncond:])
                ctx.reference_rows = slice(n_uncond, size)
            with torch.no_grad():
                ctx.expression_tokens = self.projection(expression)
            ctx.expression_scale = 1.0
            return noise_prediction_loss(self.unet, self.backbone.noise_scheduler, latents, prompts, generator)
        finally:
            ctx.expression_tokens, ctx.reference, ctx.reference_rows = None, None, None


def export_reference_lora(module: ReferenceAdapterTraining, output: Path) -> Path:
    """Write ``output/ref_adapter/pytorch_lora_weights.safetensors`` (published keys, fp32); returns its path."""
    path = Path(output) / OUTPUT_FILE
    write_reference_lora(path, module.lora_layers())
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.reference_adapter", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, lr=1e-5, condition_dropout=0.1)
    parser.add_argument("--exp-adapter", required=True, help="trained exp_adapter.bin (stage 1), kept frozen")
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank (default 128; alpha = rank)")
    parser.add_argument("--window", type=float, default=2.0,
                        help="reference and target frames are at most this many seconds apart (default 2)")
    return parser


def train(args: argparse.Namespace):
    """Run stage 2 with parsed arguments; returns the :class:`~train.loop.TrainingResult`."""
    options = TrainingOptions.from_args(args)

    def build(options: TrainingOptions):
        backbone = Backbone.load(options.models, options.base_model)
        validate(options, backbone.image_size)
        module = ReferenceAdapterTraining(backbone, Path(args.exp_adapter), args.rank, options.condition_dropout)
        pairs = ReferencePairs(FaceSamples(options.data, options.resolution), args.window, options.seed)
        return module, pairs

    return run_training(options, STAGE, build, export_reference_lora)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), train, argv)


if __name__ == "__main__":
    sys.exit(main())
