"""Stage 1: train the Expression Adapter (expression MLP + per-layer key/value projections) on a frozen Arc2Face.

::

    python -m train.expression_adapter --data DATA --models M --base-model B --output OUT [--init-from FILE]

Trains ``ExpressionProjection`` (55 FLAME values -> 4 tokens) and the ``to_k_ip``/``to_v_ip`` projection of every
cross-attention layer with the noise-prediction loss; the UNet, identity encoder and VAE stay frozen. New
projections start as copies of their layer's ``to_k``/``to_v`` (the IP-Adapter initialisation), or from a
published ``exp_adapter.bin`` with ``--init-from``. Writes ``OUT/exp_adapter/exp_adapter.bin``.

Condition dropout: with probability ``--condition-dropout`` (0.1) a sample gets the empty-prompt identity *and*
a zero expression vector together, which is exactly the unconditional branch inference uses for classifier-free
guidance. The expression is never dropped alone: a zero FLAME vector is the neutral face, so using it as a
"no expression" label would teach neutral-labelled samples to show any expression.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from retarget.models.attention import AttentionContext, cross_attention_layers, install_processors
from retarget.models.expression import ExpressionProjection
from retarget.models.formats import write_expression_adapter
from retarget.models.loading import load_expression_adapter

from .backbone import Backbone, check_trainable
from .cli import run_command
from .data import FaceSamples
from .loop import TrainingOptions, add_common_arguments, run_training, validate
from .objective import draw_unconditional, noise_prediction_loss

STAGE = "expression_adapter"
OUTPUT_FILE = Path("exp_adapter") / "exp_adapter.bin"


class ExpressionAdapterTraining(nn.Module):
    """Frozen Arc2Face + trainable expression adapter; ``forward(batch)`` is the loss of one batch.

    ``batch``: ``pixels [B, 3, S, S]`` in [-1, 1], ``identity [B, 512]`` raw ArcFace, ``expression [B, 55]``.
    """

    def __init__(self, backbone: Backbone, init_from: Path | None = None, condition_dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.unet, self.vae, self.text_encoder = backbone.unet, backbone.vae, backbone.text_encoder
        self.context = AttentionContext()
        self.condition_dropout = float(condition_dropout)
        self.layers = cross_attention_layers(self.unet)
        if init_from is not None:
            self.projection = load_expression_adapter(self.unet, init_from, self.context)
            processors = self.unet.attn_processors
            self.adapter_processors = {name: processors[name] for name, _ in self.layers}
        else:
            self.projection = ExpressionProjection(dim=self.unet.config.cross_attention_dim)
            self.adapter_processors = install_processors(self.unet, self.context, self.projection.dim)
            with torch.no_grad():
                for name, attn in self.layers:
                    self.adapter_processors[name].to_k_ip.weight.copy_(attn.to_k.weight)
                    self.adapter_processors[name].to_v_ip.weight.copy_(attn.to_v.weight)
        self.projection.requires_grad_(True)
        for processor in self.adapter_processors.values():
            processor.requires_grad_(True)
        check_trainable(self, set(self.trainable_state_dict()))
        self.register_buffer("empty_prompt", backbone.identity_encoder.encode_empty(), persistent=False)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors by parameter name (what a checkpoint stores)."""
        names = {f"projection.{k}" for k, _ in self.projection.named_parameters()}
        names |= {n for n, _ in self.named_parameters() if n.endswith(("to_k_ip.weight", "to_v_ip.weight"))}
        return {n: p for n, p in self.named_parameters() if n in names}

    def published_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(image_proj, ip_adapter)`` in the published key layout."""
        ip_adapter = {}
        for i, (name, _) in enumerate(self.layers):
            ip_adapter[f"{2 * i + 1}.to_k_ip.weight"] = self.adapter_processors[name].to_k_ip.weight
            ip_adapter[f"{2 * i + 1}.to_v_ip.weight"] = self.adapter_processors[name].to_v_ip.weight
        return self.projection.state_dict(), ip_adapter

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        latents = self.backbone.encode_latents(batch["pixels"], generator=generator)
        prompts = self.backbone.identity_encoder.encode(batch["identity"])
        expression = batch["expression"].float()
        drop = draw_unconditional(len(latents), self.condition_dropout, latents.device, generator)
        prompts = torch.where(drop[:, None, None], self.empty_prompt.to(prompts.dtype), prompts)
        expression = torch.where(drop[:, None], torch.zeros_like(expression), expression)
        self.context.expression_tokens = self.projection(expression)
        self.context.expression_scale = 1.0
        try:
            return noise_prediction_loss(self.unet, self.backbone.noise_scheduler, latents, prompts, generator)
        finally:
            self.context.expression_tokens = None


def export_expression_adapter(module: ExpressionAdapterTraining, output: Path) -> Path:
    """Write ``output/exp_adapter/exp_adapter.bin`` (fp32, published format); returns its path."""
    image_proj, ip_adapter = module.published_state()
    path = Path(output) / OUTPUT_FILE
    write_expression_adapter(path, {k: v.float() for k, v in image_proj.items()},
                             {k: v.float() for k, v in ip_adapter.items()})
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.expression_adapter", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, lr=1e-4, condition_dropout=0.1)
    parser.add_argument("--init-from", help="start from a published exp_adapter.bin instead of the IP-Adapter init")
    return parser


def train(args: argparse.Namespace):
    """Run stage 1 with parsed arguments; returns the :class:`~train.loop.TrainingResult`."""
    options = TrainingOptions.from_args(args)
    init_from = Path(args.init_from) if args.init_from else None

    def build(options: TrainingOptions):
        backbone = Backbone.load(options.models, options.base_model)
        validate(options, backbone.image_size)
        module = ExpressionAdapterTraining(backbone, init_from, options.condition_dropout)
        return module, FaceSamples(options.data, options.resolution)

    return run_training(options, STAGE, build, export_expression_adapter)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), train, argv)


if __name__ == "__main__":
    sys.exit(main())
