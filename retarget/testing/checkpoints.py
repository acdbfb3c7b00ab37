"""Random-weight checkpoints in the published file formats, for tests and benchmarks.

:func:`write_random_checkpoint` writes a complete ``models/`` folder (Arc2Face UNet, identity encoder,
expression adapter, reference LoRA) plus an SD1.5-style base folder (``vae/``, ``tokenizer/``, ``scheduler/``)
exactly as the public release lays them out, so the real loading code runs on them. ``size="tiny"`` is small
enough for CPU tests (32x32 images); ``size="full"`` has the SD1.5 / CLIP ViT-L shapes (512x512 images) for GPU
benchmarks. The weights are random: outputs are noise-like but deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.formats import write_expression_adapter, write_reference_lora
from ..models.identity import ID_PROMPT

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

_UNET_FULL = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
_UNET_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=512, attention_head_dim=8, norm_num_groups=32,
)
_VAE_FULL = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
_VAE_TINY = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=32,
    block_out_channels=(32, 64), norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)
_ENCODER_FULL = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
_ENCODER_TINY = dict(hidden_size=512, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     max_position_embeddings=77, hidden_act="quick_gelu")

SIZES = {
    "tiny": dict(unet=_UNET_TINY, vae=_VAE_TINY, encoder=_ENCODER_TINY, lora_rank=4),
    "full": dict(unet=_UNET_FULL, vae=_VAE_FULL, encoder=_ENCODER_FULL, lora_rank=128),
}


@dataclass
class RandomCheckpoint:
    """Where :func:`write_random_checkpoint` put things."""

    models_dir: Path
    base_dir: Path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(folder: Path, words=tuple(ID_PROMPT.split()), special_ids: tuple[int, int] | None = None) -> int:
    """Write a CLIP BPE tokenizer (``vocab.json``, ``merges.txt``) that spells ``words`` as single tokens.

    Every byte is in the vocabulary (so any text tokenizes); merges build each of ``words`` left to right.
    ``special_ids`` places ``<|startoftext|>``/``<|endoftext|>`` (CLIP uses 49406/49407); by default they follow
    the vocabulary. Returns the vocabulary size.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merge = f"{current} {part}"
            current = current + part
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(current)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    bos, eos = special_ids if special_ids else (len(vocab), len(vocab) + 1)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }))
    return max(vocab.values()) + 1


def _save_diffusers_model(model, folder: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    if "_use_default_values" in config:  # names diffusers collects in a set: sorted, so the same seed writes
        config["_use_default_values"] = sorted(config["_use_default_values"])  # the same bytes in every process
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=sorted))
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def random_expression_adapter(unet, n_values: int = 55, tokens: int = 4, generator=None, std: float = 0.2):
    """Random ``(image_proj, ip_adapter)`` dicts shaped for ``unet``, in the published key layout."""
    from ..models.attention import cross_attention_layers

    dim = unet.config.cross_attention_dim
    hidden = 2 * n_values

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * std

    image_proj = {
        "proj.0.weight": rand(hidden, n_values), "proj.0.bias": rand(hidden),
        "proj.2.weight": rand(tokens * dim, hidden), "proj.2.bias": rand(tokens * dim),
        "norm.weight": 1 + rand(dim), "norm.bias": rand(dim),
    }
    ip_adapter = {}
    for i, (_, attn) in enumerate(cross_attention_layers(unet)):
        width = attn.to_k.out_features
        ip_adapter[f"{2 * i + 1}.to_k_ip.weight"] = rand(width, dim) / dim**0.5 * 5
        ip_adapter[f"{2 * i + 1}.to_v_ip.weight"] = rand(width, dim) / dim**0.5 * 5
    return image_proj, ip_adapter


def random_reference_lora(unet, rank: int, generator=None, std: float = 0.05):
    """Random ``{module: (down [r,in], up [out,r])}`` for every ``attn1`` projection of ``unet``."""
    from ..models.loading import reference_lora_modules

    modules = dict(unet.named_modules())
    layers = {}
    for name in reference_lora_modules(unet):
        linear = modules[name]
        down = torch.randn(rank, linear.in_features, generator=generator) * std
        up = torch.randn(linear.out_features, rank, generator=generator) * std
        layers[name] = (down, up)
    return layers


def random_lcm_lora(unet, rank: int = 4, key_format: str = "kohya", generator=None, std: float = 0.05,
                    zero: bool = False) -> dict[str, torch.Tensor]:
    """A random LoRA in an SD1.5 LCM-LoRA's layout for ``unet``: every Linear and Conv2d of its attention and ResNet
    blocks (projections, feed-forward, ``proj_in/out``, ResNet convolutions and time projections, up/down samplers).

    ``key_format``: ``"kohya"`` (``lora_unet_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
    the published LCM-LoRA files) or ``"peft"`` (``unet.<path>.lora_A.weight`` / ``.lora_B.weight``, alpha = rank).
    ``zero``: all up weights zero (the LoRA then adds nothing).
    """
    from torch import nn

    state = {}
    for name, module in unet.named_modules():
        name = name.removesuffix(".base_layer")  # a layer that already carries a peft LoRA
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not name.startswith(("down_blocks", "mid_block", "up_blocks")) \
                or ".lora_" in name or ".processor." in name:
            continue
        if isinstance(module, nn.Linear):
            down = torch.randn(rank, module.in_features, generator=generator) * std
            up = torch.randn(module.out_features, rank, generator=generator) * std
        else:
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator) * std
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator) * std
        if zero:
            up = torch.zeros_like(up)
        if key_format == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(float(rank))
        elif key_format == "peft":
            state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = down, up
        else:
            raise ValueError(f"key_format must be 'kohya' or 'peft', got {key_format!r}")
    return state


def write_random_checkpoint(root, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> RandomCheckpoint:
    """Write ``root/models`` (published layout) and ``root/base`` (SD1.5 layout) with random weights.

    ``size``: ``"tiny"`` (CPU tests) or ``"full"`` (SD1.5 shapes). ``dtype`` is the storage dtype of the UNet,
    VAE and encoder weights (the adapters are stored in fp32 as published).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SIZES[size]
    root = Path(root)
    models, base = root / "models", root / "base"
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    unet = UNet2DConditionModel(**spec["unet"])
    _save_diffusers_model(unet, models / "arc2face", dtype)
    vae = AutoencoderKL(**spec["vae"])
    _save_diffusers_model(vae, base / "vae", dtype)

    special = (49406, 49407) if size == "full" else None
    vocab_size = write_clip_tokenizer(base / "tokenizer", special_ids=special)
    enc_kwargs = dict(spec["encoder"])
    enc_kwargs.setdefault("vocab_size", vocab_size)
    bos = 49406 if size == "full" else vocab_size - 2
    config = CLIPTextConfig(**enc_kwargs, bos_token_id=bos, eos_token_id=bos + 1, pad_token_id=1)
    encoder = CLIPTextModel(config)
    (models / "encoder").mkdir(parents=True, exist_ok=True)
    config.architectures = ["CLIPTextModel"]
    (models / "encoder" / "config.json").write_text(config.to_json_string())
    state = {}
    for key, value in encoder.state_dict().items():
        bare = key[len("text_model."):] if key.startswith("text_model.") else key
        state["text_model." + bare] = value.to(dtype).contiguous()
    torch.save(state, models / "encoder" / "pytorch_model.bin")

    (base / "scheduler").mkdir(parents=True, exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))

    image_proj, ip_adapter = random_expression_adapter(unet, generator=generator)
    write_expression_adapter(models / "exp_adapter" / "exp_adapter.bin", image_proj, ip_adapter)
    write_reference_lora(
        models / "ref_adapter" / "pytorch_lora_weights.safetensors",
        random_reference_lora(unet, spec["lora_rank"], generator=generator),
    )
    return RandomCheckpoint(models_dir=models, base_dir=base)
