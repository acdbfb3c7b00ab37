"""Loading the published Arc2Face + adapters release strictly, from a models folder and an SD1.5 base.

``models_dir`` has the published layout (see :mod:`retarget.models.formats`); the SD1.5 base provides
``vae/``, ``tokenizer/`` and ``scheduler/`` and is a local folder or a hub id fetched with huggingface_hub.
A missing file or a tensor of the wrong shape raises :class:`~retarget.errors.WeightsError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError
from .attention import AttentionContext, cross_attention_layers, install_processors
from .expression import ExpressionProjection
from .formats import (
    LORA_TARGETS,
    REFERENCE_LORA_FILE,
    check_state_dict,
    load_safetensors,
    load_weights_file,
    map_encoder_keys,
    read_expression_adapter,
    read_reference_lora,
    require_file,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BASE_SUBFOLDERS = ("vae", "tokenizer", "scheduler")
REFERENCE_ADAPTER_NAME = "reference"
LCM_ADAPTER_NAME = "lcm"


@dataclass
class ModelFiles:
    """Paths of every published file one pipeline needs."""

    unet_dir: Path
    encoder_dir: Path
    expression_adapter: Path
    reference_lora: Path | None
    base_dir: Path

    @classmethod
    def locate(cls, models_dir, base_model=None, require_reference: bool = False) -> "ModelFiles":
        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise WeightsError(f"models folder not found: {models_dir}")
        ref = models_dir / REFERENCE_LORA_FILE
        if require_reference:
            require_file(ref, "reference adapter LoRA")
        return cls(
            unet_dir=models_dir / "arc2face",
            encoder_dir=models_dir / "encoder",
            expression_adapter=require_file(models_dir / "exp_adapter" / "exp_adapter.bin", "expression adapter"),
            reference_lora=ref if ref.is_file() else None,
            base_dir=resolve_base_model(base_model),
        )


def resolve_base_model(base_model: str | os.PathLike | None) -> Path:
    """A local SD1.5 folder, or a hub id downloaded (vae/tokenizer/scheduler only) with huggingface_hub.

    ``None`` means ``$RETARGET_BASE_MODEL`` or the public SD1.5 repository.
    """
    base_model = base_model or os.environ.get("RETARGET_BASE_MODEL") or DEFAULT_BASE_MODEL
    path = Path(base_model).expanduser()
    if path.is_dir():
        missing = [s for s in BASE_SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise WeightsError(f"base model folder {path} lacks {', '.join(s + '/' for s in missing)}")
        return path
    if path.exists() or str(base_model).startswith((".", "/", "~")) or str(base_model).count("/") != 1:
        raise WeightsError(f"base model not found: {base_model} (give an SD1.5 folder or a hub id like {DEFAULT_BASE_MODEL})")
    from huggingface_hub import snapshot_download

    patterns = ["vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/*", "scheduler/*"]
    try:
        return Path(snapshot_download(str(base_model), allow_patterns=patterns))
    except Exception as exc:
        raise WeightsError(
            f"cannot fetch the base model '{base_model}' from the hub ({type(exc).__name__}); "
            "download its vae/, tokenizer/ and scheduler/ folders and give that folder as --base-model (Python: "
            "base_model=; or set $RETARGET_BASE_MODEL)"
        ) from exc


def _read_json(path: Path, what: str) -> dict:
    require_file(path, what)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc


def _strict_load(model: torch.nn.Module, state: dict, path: Path, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """Check ``state`` against ``model`` (names and shapes) and assign it, on ``device`` (default: where the tensors
    are) and cast to ``dtype`` (floating tensors). Each tensor moves and is cast in one ``Tensor.to``, so for a GPU
    the cast (e.g. of the fp16 release to bf16) runs there rather than on the CPU."""
    check_state_dict(model, state, path)
    if dtype is not None or device is not None:
        state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _build_on_meta(factory):
    with torch.device("meta"):
        return factory()


def load_unet(folder: Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """The Arc2Face UNet (``config.json`` + ``diffusion_pytorch_model.safetensors``), strictly; weights in ``dtype``
    (default: as stored) on ``device`` (default: the CPU)."""
    from diffusers import UNet2DConditionModel

    config = _read_json(folder / "config.json", "Arc2Face UNet config")
    path, state = load_weights_file(
        folder, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"), "Arc2Face UNet weights"
    )
    unet = _build_on_meta(lambda: UNet2DConditionModel.from_config(config))
    return _strict_load(unet, state, path, dtype, device).eval().requires_grad_(False)


def load_vae(folder: Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """The SD1.5 VAE (``vae/``), strictly; weights in ``dtype`` (default: as stored) on ``device`` (default: the
    CPU)."""
    from diffusers import AutoencoderKL

    config = _read_json(folder / "config.json", "VAE config")
    path, state = load_weights_file(folder, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"), "VAE weights")
    vae = _build_on_meta(lambda: AutoencoderKL.from_config(config))
    return _strict_load(vae, state, path, dtype, device).eval().requires_grad_(False)


def load_identity_encoder_model(folder: Path, dtype: torch.dtype | None = None,
                                device: torch.device | str | None = None):
    """The Arc2Face CLIP text encoder; published ``text_model.*`` keys are mapped for current transformers.
    Weights in ``dtype`` (default: as stored) on ``device`` (default: the CPU)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    require_file(folder / "config.json", "identity encoder config")
    config = CLIPTextConfig.from_json_file(str(folder / "config.json"))
    path, state = load_weights_file(folder, ("model.safetensors", "pytorch_model.bin"), "identity encoder weights")
    model = _build_on_meta(lambda: CLIPTextModel(config))
    # Non-persistent buffers (position_ids) are not in the file: materialise them before assigning weights.
    model = model.to_empty(device=device or "cpu")
    for module in model.modules():
        if hasattr(module, "position_ids"):
            length = module.position_ids.shape[-1]
            module.position_ids = torch.arange(length, device=device or "cpu").expand(1, -1)
    state = map_encoder_keys(state, set(model.state_dict()))
    return _strict_load(model, state, path, dtype, device).eval().requires_grad_(False)


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    for name in ("vocab.json", "merges.txt"):
        require_file(folder / name, "tokenizer file")
    return CLIPTokenizer.from_pretrained(str(folder))


def load_scheduler_config(folder: Path) -> dict:
    """The base scheduler config (a PNDM config for SD1.5); DPM-Solver++ is built from it per call."""
    return _read_json(folder / "scheduler_config.json", "scheduler config")


def load_expression_adapter(unet, path: Path, context: AttentionContext) -> ExpressionProjection:
    """Install the expression/reference processors on ``unet`` and load ``exp_adapter.bin`` into them.

    Sizes come from the file and must match the UNet: token width == ``cross_attention_dim``, one
    ``to_k_ip``/``to_v_ip`` pair per cross-attention layer with ``[layer width, token width]`` weights.
    """
    proj_state, ip_state = read_expression_adapter(path)
    projection = ExpressionProjection.from_state_dict(proj_state)
    if projection.dim != unet.config.cross_attention_dim:
        raise WeightsError(
            f"{path}: expression tokens are {projection.dim}-d but the UNet's cross-attention is "
            f"{unet.config.cross_attention_dim}-d"
        )
    layers = cross_attention_layers(unet)
    expected = {f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(layers)) for kv in "kv"}
    if set(ip_state) != expected:
        extra = sorted(set(ip_state) - expected)
        missing = sorted(expected - set(ip_state))
        raise WeightsError(
            f"{path}: ip_adapter has {len(ip_state) // 2} layer pairs, the UNet has {len(layers)} cross-attention "
            f"layers (missing {missing[:2]}, unexpected {extra[:2]})"
        )
    processors = install_processors(unet, context, projection.dim)
    for i, (name, attn) in enumerate(layers):
        proc = processors[name]
        for kv in "kv":
            weight = ip_state[f"{2 * i + 1}.to_{kv}_ip.weight"]
            target = getattr(proc, f"to_{kv}_ip").weight
            if weight.shape != target.shape:
                raise WeightsError(
                    f"{path}: '{2 * i + 1}.to_{kv}_ip.weight' has shape {list(weight.shape)}, layer {name} needs "
                    f"{list(target.shape)}"
                )
            target.data.copy_(weight)
        proc.requires_grad_(False)
    return projection.eval().requires_grad_(False)


def reference_lora_modules(unet) -> list[str]:
    """Module paths of every ``attn1`` projection the reference LoRA adapts (``...attn1.to_q`` etc.)."""
    return [
        f"{name[: -len('.processor')]}.{target}"
        for name in unet.attn_processors
        if name.endswith("attn1.processor")
        for target in LORA_TARGETS
    ]


def load_reference_lora(unet, path: Path) -> int:
    """Attach the reference LoRA to ``unet``'s ``attn1`` layers with peft; returns its rank.

    The file must cover exactly the ``attn1`` ``to_q/to_k/to_v/to_out.0`` layers with matching shapes. The adapter
    is named ``"reference"``; its weight is the reference scale (alpha = rank, so the LoRA's own scale is 1).
    """
    layers = read_reference_lora(path)
    expected = reference_lora_modules(unet)
    missing = [m for m in expected if m not in layers]
    extra = [m for m in layers if m not in expected]
    if missing or extra:
        raise WeightsError(
            f"{path}: covers {len(layers)} layers, the UNet has {len(expected)} attn1 projections "
            f"(missing e.g. {missing[:1]}, unexpected e.g. {extra[:1]})"
        )
    modules = dict(unet.named_modules())
    ranks = set()
    for name, (down, up) in layers.items():
        linear = modules[name]
        if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
            raise WeightsError(
                f"{path}: '{name}' LoRA maps {down.shape[1]}->{up.shape[0]}, the layer is "
                f"{linear.in_features}->{linear.out_features}"
            )
        ranks.add(down.shape[0])
    if len(ranks) != 1:
        raise WeightsError(f"{path}: mixed LoRA ranks {sorted(ranks)}")
    rank = ranks.pop()
    state = {}
    for name, (down, up) in layers.items():
        state[f"unet.{name}.lora.down.weight"] = down
        state[f"unet.{name}.lora.up.weight"] = up
    unet.load_lora_adapter(state, prefix="unet", adapter_name=REFERENCE_ADAPTER_NAME)
    return rank


def load_lcm_lora(unet, path: Path) -> int:
    """Attach an SD1.5 LCM-LoRA to ``unet`` as the adapter ``"lcm"``; returns the number of adapted layers.

    The file is read and converted by diffusers' stock LoRA loader (what ``load_lora_weights`` does for a UNet),
    so kohya-style ``lora_unet_*`` keys (with ``.alpha``) and diffusers/peft ``unet.*`` keys both load; the LoRA
    stacks with the reference LoRA. A file with no UNet LoRA weights, or one that does not fit this UNet, raises
    :class:`~retarget.errors.WeightsError` naming it.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    path = require_file(path, "LCM-LoRA")
    state = load_safetensors(path)
    try:
        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(state)
    except Exception as exc:
        raise WeightsError(f"{path}: not a LoRA file diffusers can read ({type(exc).__name__}: {exc})") from exc
    if not any(key.startswith("unet.") for key in state):
        raise WeightsError(f"{path}: no UNet LoRA weights (expected 'lora_unet_*' or 'unet.*' keys)")
    try:
        with warnings.catch_warnings():  # peft warns that the UNet already has an adapter (the reference LoRA)
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, unet, adapter_name=LCM_ADAPTER_NAME)
    except Exception as exc:
        raise WeightsError(f"{path}: does not fit the Arc2Face UNet ({type(exc).__name__}: {exc})") from exc
    from .adapters import lora_layers

    count = sum(LCM_ADAPTER_NAME in layer.lora_A for layer in lora_layers(unet))
    if count == 0:
        raise WeightsError(f"{path}: none of its layers is in the Arc2Face UNet")
    return count
