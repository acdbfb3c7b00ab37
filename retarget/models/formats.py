"""Reading and writing the published weight files, with strict checks.

Published layout (under one ``models/`` folder)::

    arc2face/     config.json + diffusion_pytorch_model.safetensors   (diffusers UNet2DConditionModel)
    encoder/      config.json + pytorch_model.bin                     (CLIP text model, keys ``text_model.*``)
    exp_adapter/  exp_adapter.bin      {"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight", ...}}
    ref_adapter/  pytorch_lora_weights.safetensors   ``unet.<path>.attn1.<proj>.lora.{down,up}.weight``

Every reader here raises :class:`~retarget.errors.WeightsError` with one line naming the file when it is
missing, unreadable or of the wrong layout. Pickled files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import WeightsError
from .expression import NUM_EXPRESSION_VALUES

EXPRESSION_PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_LORA_KEY = re.compile(r"^unet\.(?P<module>.+\.attn1\.(?:to_q|to_k|to_v|to_out\.0))\.lora\.(?P<kind>down|up)\.weight$")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise WeightsError saying which file of which component is missing."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"missing {what}: {path}")
    return path


def load_torch_pickle(path: str | os.PathLike) -> dict:
    """Load a ``.bin``/``.pt`` checkpoint safely (``weights_only=True``) onto the CPU (a ``.safetensors`` file given
    instead is read as one)."""
    import pickle

    if Path(path).suffix == ".safetensors":
        return load_safetensors(path)
    check_header(path)  # a file that is not a torch file at all: one line saying so
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own advice (weights_only=False) would run the file's code
        raise WeightsError(f"cannot read {path}: it holds Python objects other than tensors, which are not loaded "
                           "(a checkpoint is read with weights_only=True, so it cannot run code)") from exc
    except Exception as exc:  # a corrupt or truncated file
        raise WeightsError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a dictionary of tensors")
    return obj


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU, with a clear error when it is not one."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise WeightsError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def load_weights_file(folder: Path, names: tuple[str, ...], what: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """Load the first existing of ``names`` in ``folder`` (safetensors preferred, pickles read safely)."""
    for name in names:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return path, load_safetensors(path)
            return path, load_torch_pickle(path)
    raise WeightsError(f"missing {what}: none of {', '.join(names)} in {folder}")


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, ignore=()) -> None:
    """Raise WeightsError naming ``path`` unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in ignore]
    if missing:
        raise WeightsError(f"{path}: {len(missing)} tensors missing, e.g. '{missing[0]}'")
    if unexpected:
        raise WeightsError(f"{path}: {len(unexpected)} unexpected tensors, e.g. '{unexpected[0]}'")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{path}: '{key}' has shape {list(state[key].shape)}, the model needs {list(value.shape)}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Expression adapter (exp_adapter.bin)


def read_expression_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read ``exp_adapter.bin`` and return ``(image_proj, ip_adapter)`` state dicts, checked for layout.

    ``image_proj`` holds exactly :data:`EXPRESSION_PROJ_KEYS` with consistent shapes
    (``proj.0 [hidden, 55]``, ``proj.2 [tokens*dim, hidden]``, ``norm [dim]``); ``ip_adapter`` holds
    ``"{k}.to_k_ip.weight"``/``"{k}.to_v_ip.weight"`` for ``k = 1, 3, 5, ...``. Shapes against the UNet are
    checked by the loader, which knows the UNet.
    """
    path = require_file(path, "expression adapter")
    obj = load_torch_pickle(path)
    if set(obj) != {"image_proj", "ip_adapter"}:
        raise WeightsError(f"{path}: expected the keys 'image_proj' and 'ip_adapter', found {sorted(obj)[:4]}")
    proj, ip = obj["image_proj"], obj["ip_adapter"]
    if set(proj) != set(EXPRESSION_PROJ_KEYS):
        missing = sorted(set(EXPRESSION_PROJ_KEYS) - set(proj))
        extra = sorted(set(proj) - set(EXPRESSION_PROJ_KEYS))
        raise WeightsError(f"{path}: image_proj is not the expression MLP (missing {missing}, unexpected {extra})")
    hidden, n_values = proj["proj.0.weight"].shape
    if n_values != NUM_EXPRESSION_VALUES:  # SMIRK gives 55 values per frame; no other input width can be fed
        raise WeightsError(f"{path}: image_proj proj.0.weight is {hidden}x{n_values}: it takes {n_values} values, "
                           f"not the {NUM_EXPRESSION_VALUES} SMIRK expression values")
    dim = proj["norm.weight"].shape[0]
    out = proj["proj.2.weight"].shape
    if proj["proj.0.bias"].shape != (hidden,) or out[1] != hidden or proj["proj.2.bias"].shape != (out[0],):
        raise WeightsError(f"{path}: image_proj layer shapes do not chain ({hidden}x{n_values} then {list(out)})")
    if out[0] % dim or proj["norm.bias"].shape != (dim,):
        raise WeightsError(f"{path}: image_proj output {out[0]} is not a whole number of {dim}-d tokens")
    for key in ip:
        if not re.fullmatch(r"\d+\.to_[kv]_ip\.weight", key):
            raise WeightsError(f"{path}: unexpected ip_adapter key '{key}'")
    return dict(proj), dict(ip)


def write_expression_adapter(path: str | os.PathLike, image_proj: dict, ip_adapter: dict) -> None:
    """Write ``exp_adapter.bin`` in the published format (a torch pickle of two plain dicts of tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "image_proj": {k: v.detach().cpu().contiguous() for k, v in image_proj.items()},
            "ip_adapter": {k: v.detach().cpu().contiguous() for k, v in ip_adapter.items()},
        },
        tmp,
    )
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Reference adapter LoRA (pytorch_lora_weights.safetensors)


def read_reference_lora(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read the reference LoRA and return ``{module path: (down [r,in], up [out,r])}`` for each ``attn1`` layer.

    Keys must be ``unet.<module>.attn1.<to_q|to_k|to_v|to_out.0>.lora.{down,up}.weight`` with matching ranks;
    alpha is not stored, so the LoRA scale is ``alpha / r = 1`` (times the user's reference scale).
    """
    path = require_file(path, "reference adapter LoRA")
    state = load_safetensors(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise WeightsError(f"{path}: unexpected key '{key}' (expected unet.<...>.attn1.<proj>.lora.down/up.weight)")
        pairs.setdefault(match["module"], {})[match["kind"]] = value
    if not pairs:
        raise WeightsError(f"{path}: holds no LoRA weights")
    result = {}
    for module, pair in pairs.items():
        if set(pair) != {"down", "up"}:
            raise WeightsError(f"{path}: '{module}' lacks its lora.{'down' if 'down' not in pair else 'up'} weight")
        down, up = pair["down"], pair["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise WeightsError(f"{path}: 'unet.{module}.lora.down.weight' {list(down.shape)} and '.lora.up.weight' "
                               f"{list(up.shape)} do not chain (expected [rank, in] and [out, rank])")
        result[module] = (down, up)
    return result


def write_reference_lora(path: str | os.PathLike, layers: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write ``{module path: (down, up)}`` as the published LoRA safetensors (fp32, no alpha keys)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for module, (down, up) in layers.items():
        state[f"unet.{module}.lora.down.weight"] = down.detach().float().cpu().contiguous()
        state[f"unet.{module}.lora.up.weight"] = up.detach().float().cpu().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Identity encoder (CLIP text model with published ``text_model.*`` keys)


def map_encoder_keys(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Map published CLIP text-encoder keys onto ``model_keys``.

    The release stores ``text_model.embeddings...``; transformers 5's ``CLIPTextModel`` has no ``text_model``
    submodule, so the prefix is added or removed as the model needs. The ``position_ids`` buffer some releases
    carry is dropped (recent transformers do not persist it).
    """
    wants_prefix = any(k.startswith("text_model.") for k in model_keys)
    mapped = {}
    for key, value in state.items():
        bare = key[len("text_model."):] if key.startswith("text_model.") else key
        if bare.endswith("embeddings.position_ids"):
            continue
        mapped["text_model." + bare if wants_prefix else bare] = value
    return mapped


#: The Reference Adapter's LoRA under the models folder (the only pipeline file a render can do without).
REFERENCE_LORA_FILE = "ref_adapter/pytorch_lora_weights.safetensors"

#: The pipeline's weight files under the models folder whose headers :func:`check_headers` reads.
PIPELINE_WEIGHT_FILES = ("arc2face/diffusion_pytorch_model.safetensors", "arc2face/diffusion_pytorch_model.bin",
                         "encoder/pytorch_model.bin", "encoder/model.safetensors", "exp_adapter/exp_adapter.bin",
                         REFERENCE_LORA_FILE)


def check_header(path: str | os.PathLike) -> None:
    """Read only the start of a weight file and raise :class:`WeightsError` (one line naming it) when it cannot be
    one: a ``.safetensors`` file needs its 8-byte header length and a JSON header within the file; a pickled
    ``.bin``/``.pt`` file must be a torch zip archive or a legacy pickle (first byte 0x80). Milliseconds for any
    size; a file that passes may still fail the full load (wrong keys or shapes, a truncated body)."""
    import json
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if path.suffix == ".safetensors":
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            try:
                if not 0 < length <= size - 8:
                    raise ValueError("bad header length")
                json.loads(handle.read(length))
            except ValueError as error:
                raise WeightsError(f"cannot read {path}: not a safetensors file ({error})") from error
            return
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise WeightsError(f"cannot read {path}: not a torch weights file (neither a zip archive nor a pickle)")


def check_headers(models_dir: str | os.PathLike) -> None:
    """:func:`check_header` for each of :data:`PIPELINE_WEIGHT_FILES` present in ``models_dir`` (missing ones are
    left to the loader, which names what it needs)."""
    for name in PIPELINE_WEIGHT_FILES:
        path = Path(models_dir) / name
        if path.is_file():
            check_header(path)
