"""``ExpressionPipeline``: Arc2Face + Expression Adapter + Reference Adapter, rendering many frames per call.

The math is the published model's (Arc2Face identity prompt, IP-Adapter-style expression tokens in every
cross-attention, reference self-attention on the conditional half of the CFG batch, LoRA on ``attn1``,
DPM-Solver++ from the SD1.5 scheduler config), but the denoising loop is our own so that a batch may hold a
different expression and identity per frame and still equal rendering each frame alone.

Per-clip work is cached: the empty-prompt and zero-expression embeddings at load, the identity prompt and the
reference features (and their keys/values per layer) for the last identity/reference seen, so a clip rendered in
many batches pays for them once. Within one call, everything that does not change from step to step (keys and
values of the prompt, expression tokens and reference tokens) is computed before the loop and handed to the
attention processors as tensors, and the LoRA adapters are folded into the weights (:meth:`optimize`): the
UNet forward then has no Python state that changes between calls, so :meth:`compile` traces it once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import WeightsError
from .models.adapters import AdapterWeights
from .models.attention import (
    AttentionContext,
    ExpressionCrossAttnProcessor,
    ReferenceBank,
    ReferenceSelfAttnProcessor,
    fuse_self_attention_projections,
)
from .models.formats import REFERENCE_LORA_FILE
from .models.identity import ARCFACE_DIM, IdPromptEncoder
from .models.loading import (
    LCM_ADAPTER_NAME,
    REFERENCE_ADAPTER_NAME,
    ModelFiles,
    load_expression_adapter,
    load_identity_encoder_model,
    load_lcm_lora,
    load_reference_lora,
    load_scheduler_config,
    load_tokenizer,
    load_unet,
    load_vae,
)

log = logging.getLogger(__name__)
compile_log = logging.getLogger(__name__ + ".compile")  # the notice of a (slow) first compile; the CLI shows it

#: The ``torch.compile`` backends whose compiled artefacts persist in :func:`use_persistent_inductor_cache`'s folder.
PERSISTENT_BACKENDS = ("inductor",)

#: Seconds a batch's denoising runs before its bar over the steps appears (``progress=True``): a batch on a GPU
#: (seconds) shows none, a batch of the full model on a CPU (a minute per step) shows its steps.
STEP_BAR_DELAY_S = 5.0


@dataclass
class ExpressionPipelineOutput:
    """``images``: float ``[B, H, W, 3]`` in [0, 1] ("np"), uint8 ``[B, H, W, 3]`` ("uint8"), a list of PIL images
    ("pil"), ``[B, 3, H, W]`` in [0, 1] ("pt"), or latents ``[B, 4, h, w]`` ("latent")."""

    images: np.ndarray | list | torch.Tensor


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, each value rounded to the nearest of 0..255 (halves to even, as
    ``np.rint``), on the images' device."""
    return torch.round(images * 255.0).clamp_(0, 255).to(torch.uint8)


def bf16_native(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively: compute capability 8.0 (Ampere) or newer, or a ROCm
    GPU that torch says supports it. ``torch.cuda.is_bf16_supported()`` alone also answers True for older cards
    (V100, T4), which only emulate bf16, with slow convolution and attention kernels."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device)[0] >= 8


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA when available; bf16 on GPUs that compute in it natively (see :func:`bf16_native`), else fp16; fp32
    on the CPU."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if bf16_native(device) else torch.float16
        else:
            dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[dtype]
    return device, dtype


def _mode_uses_cuda_graphs(mode: str | None, options: dict | None) -> bool:
    """Whether inductor replays CUDA graphs under ``torch.compile(mode=mode, options=options)``: the modes
    ``"reduce-overhead"`` and ``"max-autotune"``, or the option ``triton.cudagraphs``."""
    if options and "triton.cudagraphs" in options:
        return bool(options["triton.cudagraphs"])
    return mode in ("reduce-overhead", "max-autotune")


def _without_cuda_graphs(mode: str | None, kwargs: dict) -> dict:
    """``torch.compile`` keyword arguments of ``mode`` and ``kwargs`` with CUDA graphs taken out (the same mode's
    other settings): for a function whose outputs must outlive its next call, as CUDA graphs reuse output buffers."""
    kwargs = dict(kwargs)
    if kwargs.get("options") is not None:
        kwargs["options"] = {**kwargs["options"], "triton.cudagraphs": False}
        return kwargs
    return {"mode": {"reduce-overhead": None, "max-autotune": "max-autotune-no-cudagraphs"}.get(mode, mode), **kwargs}


class _LoadClock:
    """Seconds per part of :meth:`ExpressionPipeline.from_pretrained` (``parts``, in order), for load profiles;
    ``check`` (optional) is called after each part, and may raise to stop the load there."""

    def __init__(self, check: Callable[[], None] | None = None):
        self.parts: dict[str, float] = {}
        self._last = time.perf_counter()
        self._check = check

    def lap(self, name: str, sync=None) -> None:
        """Close part ``name`` now (after the device's queued work, for a CUDA ``sync`` device), then check."""
        if sync is not None and torch.device(sync).type == "cuda":
            torch.cuda.synchronize(torch.device(sync))
        now = time.perf_counter()
        self.parts[name] = round(self.parts.get(name, 0.0) + now - self._last, 4)
        self._last = now
        if self._check is not None:
            self._check()


def _digest(*tensors: torch.Tensor) -> str:
    """Content hash of tensors (dtype, shape and bytes), used as a cache key for per-clip conditioning."""
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def clip_noise(seed: int, frame_indices, latent_shape: tuple[int, int, int], per_frame: bool = False) -> torch.Tensor:
    """Initial noise for frames of a clip: ``[len(frame_indices), C, h, w]`` float32 on the CPU.

    By default every frame gets the same noise (drawn from ``seed``), which keeps a rendered clip temporally
    stable. With ``per_frame`` each frame's noise is drawn from ``(seed, frame index)``, so it does not depend
    on how the clip is split into batches or resumed.
    """
    frames = list(frame_indices)
    if not per_frame:
        base = torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(seed))
        return base.expand(len(frames), *latent_shape).clone()
    out = torch.empty((len(frames), *latent_shape))
    for row, index in enumerate(frames):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
        out[row] = torch.randn(latent_shape, generator=g)
    return out


def _row_seed(latents: torch.Tensor) -> int:
    """A seed derived from one frame's initial noise (the same noise gives the same seed)."""
    return int(_digest(latents.float())[:15], 16)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x [B, ...]`` with its last row repeated up to ``rows`` rows (unchanged when ``B >= rows``)."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


def persistent_inductor_cache_dir(cache_dir=None) -> Path:
    """The folder :func:`use_persistent_inductor_cache` points inductor's cache at (nothing is made or set here).

    ``cache_dir`` wins; else ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it; else
    ``$XDG_CACHE_HOME/retarget/inductor`` (``~/.cache/retarget/inductor``). Importing ``torch._inductor`` (diffusers
    does) writes inductor's default temporary folder (``/tmp/torchinductor_<user>``) into the variable, so that
    value counts as unset.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir is None and chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    if cache_dir is None:
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        cache_dir = Path(root) / "retarget" / "inductor"
    return Path(cache_dir).expanduser()


def use_persistent_inductor_cache(cache_dir=None) -> Path:
    """Point inductor's on-disk cache (compiled graphs, kernels) at a persistent folder (see
    :func:`persistent_inductor_cache_dir`) and return it, so a second run reuses the compiled artefacts of the first
    instead of recompiling in a temporary folder."""
    path = persistent_inductor_cache_dir(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def _compile_settings(mode: str | None, fullgraph: bool, decoder: bool, kwargs: dict) -> dict:
    """The ``torch.compile`` settings of :meth:`ExpressionPipeline.compile`, as recorded with a compiled graph."""
    return {"mode": mode, "fullgraph": bool(fullgraph), "decoder": bool(decoder), **{k: kwargs[k] for k in sorted(kwargs)}}


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _device_label(device: torch.device) -> str:
    """The device as a compiled graph depends on it: the GPU's name and compute capability, else its type."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} sm{''.join(map(str, torch.cuda.get_device_capability(index)))}"
    return device.type



def _compile_failure_line(error: BaseException) -> str:
    """The line of a failed compile that says what failed: the last non-empty line of the backend's message before
    dynamo's advice (e.g. ``InvalidCxxCompiler: No working C++ compiler found ...``), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Set TORCHDYNAMO_VERBOSE", "You can suppress",
                                                             "import torch._dynamo", "torch._dynamo.config"))]
    line = lines[-1] if lines else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class ExpressionPipeline:
    """Renders faces of an identity with per-frame expressions, optionally anchored on a reference image.

    Build with :meth:`from_pretrained`; call to render. Components: ``unet`` (Arc2Face, with the expression
    processors and the reference LoRA attached), ``vae``, ``text_encoder`` + ``tokenizer`` (identity encoder),
    ``expression_projection``, and the base scheduler config. The reference pass reuses ``unet`` with both
    adapters switched off, which is exactly the published reference UNet (a frozen copy of the Arc2Face UNet)
    without holding a second copy in memory.

    Speed settings (:meth:`optimize`, applied by :meth:`from_pretrained`): LoRA adapters folded into the weights,
    one matmul for the self-attention Q/K/V; :meth:`compile` for ``torch.compile`` (with the UNet in channels-last).
    Fast sampling: :meth:`load_lcm_lora`. ``static_batch_size``: calls with fewer frames are padded to this many
    rows (the extra rows are discarded), so a compiled UNet sees one shape; :meth:`compile` keeps it at the largest
    batch seen. ``load_seconds``: after :meth:`from_pretrained`, the seconds of each part of the load, in order
    (``imports`` of the libraries, ``unet``, ``adapters``, ``encoder``, ``vae``, ``to_device``, ``setup``).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, expression_projection,
                 context: AttentionContext, has_reference_adapter: bool, device, dtype):
        self.unet, self.vae = unet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.scheduler_config = scheduler_config
        self.expression_projection = expression_projection
        self.context = context
        self.has_reference_adapter = has_reference_adapter
        self.device, self.dtype = torch.device(device), dtype
        self.vae_dtype = dtype
        self.vae_batch_size = 8
        self.identity_encoder = IdPromptEncoder(text_encoder, tokenizer)
        self.adapters = AdapterWeights(unet, fold=False)
        self.has_lcm_adapter = False
        self.sampler = "dpm"
        self.static_batch_size = 0
        self._grow_static_batch = False
        self._denoiser = None
        self._compiled_decode = None  # the compiled VAE decode (see compile), if any
        self._compile_records: tuple[Path, dict] | None = None  # (inductor cache folder, compile settings)
        self._recorded_inputs: set[tuple] = set()  # the compiled inputs recorded there by this process
        self.uses_cuda_graphs = False  # whether the compiled UNet replays CUDA graphs (see compile)
        self.compile_failure: str | None = None  # why torch.compile was given up (see compile), if it was
        self._compiled_inputs: set[tuple] = set()  # (rows, guidance on, reference on) the compiled UNet has seen
        self._bank_version: tuple | None = None
        self._identity_cache: tuple[str, torch.Tensor] | None = None
        self._reference_cache: tuple[str, ReferenceBank] | None = None
        self.load_seconds: dict[str, float] = {}
        with torch.no_grad():
            self._empty_prompt = self.identity_encoder.encode_empty().to(dtype)
            zeros = torch.zeros(1, expression_projection.n_values, device=self.device, dtype=dtype)
            self._neutral_tokens = expression_projection(zeros)
        self.adapters.apply({})

    # ------------------------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, models_dir, base_model=None, device=None, dtype=None,
                        check: Callable[[], None] | None = None) -> "ExpressionPipeline":
        """Load the published files strictly (see :mod:`retarget.models.loading`).

        ``models_dir``: folder in the published layout. ``base_model``: SD1.5 folder or hub id for ``vae/``,
        ``tokenizer/``, ``scheduler/`` (default ``$RETARGET_BASE_MODEL`` or the public SD1.5 repository).
        ``device``/``dtype``: default CUDA with bf16 (fp16 where bf16 is unsupported), else CPU with fp32.
        The reference adapter file is optional; without it, rendering with a reference image is an error.
        ``check``: called after each part of the load (imports, UNet, adapters, ...); raising there stops it (a
        load on a background thread stops this way when the program exits, see :mod:`retarget.jobs.session`).
        """
        device, dtype = default_device_dtype(device, dtype)
        files = ModelFiles.locate(models_dir, base_model)
        clock = _LoadClock(check)
        import diffusers.models  # noqa: F401  (the libraries' own imports are a large share of a load: timed apart)
        import peft  # noqa: F401
        import transformers.models.clip  # noqa: F401

        clock.lap("imports")
        unet = load_unet(files.unet_dir, dtype, device)  # moved, then cast on the device
        clock.lap("unet", sync=device)
        if unet.config.cross_attention_dim is None:
            raise WeightsError(f"{files.unet_dir}: the UNet has no cross-attention")
        context = AttentionContext()
        projection = load_expression_adapter(unet, files.expression_adapter, context)
        has_reference = files.reference_lora is not None
        if has_reference:
            load_reference_lora(unet, files.reference_lora)
        clock.lap("adapters")
        text_encoder = load_identity_encoder_model(files.encoder_dir, dtype, device)
        clock.lap("encoder")
        if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
            raise WeightsError(
                f"{files.encoder_dir}: the identity encoder is {text_encoder.config.hidden_size}-d, the UNet expects "
                f"{unet.config.cross_attention_dim}-d prompt embeddings"
            )
        vae = load_vae(files.base_dir / "vae", dtype, device)
        tokenizer = load_tokenizer(files.base_dir / "tokenizer")
        scheduler_config = load_scheduler_config(files.base_dir / "scheduler")
        clock.lap("vae")
        # The backbone weights were loaded in ``dtype`` on the device; the adapters' new layers follow. (nn.Module.to:
        # diffusers' override warns about float32 modules on every dtype cast, even when the model has none.)
        for module in (unet, vae, text_encoder, projection):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        clock.lap("to_device", sync=device)
        log.info("loaded %s on %s (%s)", models_dir, device, dtype)
        pipe = cls(unet, vae, text_encoder, tokenizer, scheduler_config, projection, context, has_reference, device, dtype)
        pipe.optimize()
        clock.lap("setup", sync=device)
        pipe.load_seconds = clock.parts
        return pipe

    def load_lcm_lora(self, path) -> None:
        """Stack an SD1.5 LCM-LoRA (kohya ``lora_unet_*`` or diffusers/peft ``unet.*`` safetensors) on the UNet,
        always at scale 1, and sample with diffusers' ``LCMScheduler`` (use 4-8 steps, guidance 1-2).

        The reference pass still runs the plain UNet (no adapter at all), as the published reference UNet does.
        """
        self.adapters.apply({})
        load_lcm_lora(self.unet, Path(path))
        self.adapters.reset()
        self.has_lcm_adapter = True
        self.sampler = "lcm"

    # ------------------------------------------------------------------------------------------------------------
    # Geometry and options

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        """Side of the square output images in pixels (UNet sample size x VAE factor; 512 when published)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def enable_vae_tiling(self) -> None:
        """Decode in tiles (lower peak memory for large batches or sizes)."""
        self.vae.enable_tiling()

    def upcast_vae(self) -> None:
        """Run the VAE in fp32 (avoids fp16 artefacts on older GPUs at a small cost)."""
        # torch's own cast: diffusers' ``to`` warns about modules "that should be kept in float32" on any dtype
        # change, a line that means nothing when the cast is to float32 itself
        torch.nn.Module.to(self.vae, dtype=torch.float32)
        self.vae_dtype = torch.float32

    def optimize(self, fold_lora: bool = True, fuse_qkv: bool = True, channels_last: bool = False) -> None:
        """Choose how the same math is computed (all on by default; :meth:`from_pretrained` calls this).

        ``fold_lora``: fold the LoRA adapters into the weights for each denoising loop (else peft adds them per
        layer). ``fuse_qkv``: one ``[3 * inner, dim]`` matmul for the self-attention queries/keys/values.
        ``channels_last``: the UNet's and VAE's memory format (default: off; :meth:`compile` turns it on for the
        compiled UNet). Eagerly on CUDA it is slower here: PyTorch's GroupNorm kernel makes a contiguous copy of a
        channels-last input and the next convolution converts back, and on an H200 these layout copies took 23% of
        the device time of a batch, more than the other two options save. Each option is equal to the unoptimised
        path up to float rounding.
        """
        self.adapters.apply({})
        self.adapters.fold = fold_lora
        self.adapters.reset()
        self._set_memory_format(bool(channels_last), self.unet, self.vae)
        if fuse_qkv:
            fuse_self_attention_projections(self.unet)
        else:
            for processor in self.unet.attn_processors.values():
                if isinstance(processor, ReferenceSelfAttnProcessor):
                    processor.qkv_weight = None

    @staticmethod
    def _set_memory_format(channels_last: bool, *modules: torch.nn.Module) -> None:
        """Put the 4-D parameters of ``modules`` in channels-last or the contiguous format (same values)."""
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for module in modules:
            torch.nn.Module.to(module, memory_format=memory_format)

    def compile(self, mode: str | None = None, backend="inductor", fullgraph: bool = False, cache_dir=None,
                decoder: bool = False, **kwargs) -> None:
        """``torch.compile`` the UNet of the denoising loop (the first call is slow; later calls are faster on GPUs).

        Shapes are static (``dynamic=False``) and each call is padded to the largest batch seen, so one graph
        serves a whole clip and every later clip of the same batch size and guidance mode; identities,
        references and scales are tensor inputs and never recompile. ``mode``: e.g. ``"max-autotune"`` or
        ``"reduce-overhead"`` (CUDA graphs, as ``"max-autotune"``; :attr:`uses_cuda_graphs` then says so: torch
        records CUDA graphs per thread, so render from one thread and skip :meth:`warm_up` on another). With inductor, compiled artefacts are kept in a persistent cache
        (:func:`use_persistent_inductor_cache`; ``cache_dir`` overrides). The UNet's weights are put in
        channels-last (the reference pass, which stays eager, reads the same weights).

        A compile that fails (the backend raises: no C/C++ compiler, no working Triton, e.g. on Windows without
        ``triton-windows``; or dynamo's own tracing raises) does not fail the render: the pipeline logs one warning
        (logger ``retarget.pipeline.compile``), keeps the reason in :attr:`compile_failure` and renders eagerly from
        then on, in the eager layout (the step that failed is computed eagerly, so results are the eager ones up to
        float rounding).

        ``decoder``: also compile the VAE decode (the same math; off by default until measured on a GPU), with the
        same backend and options but without CUDA graphs (its images must outlive the next VAE batch); each VAE
        batch is padded to :attr:`vae_batch_size` rows, so one graph serves a whole clip.

        With inductor, each denoising loop of a new shape that finishes compiled leaves a record in the cache folder
        (:mod:`retarget.models.compile_records`), which :meth:`compiled_before` reads.
        """
        self._compile_records, self._recorded_inputs = None, set()
        if backend in PERSISTENT_BACKENDS:  # its compiled graphs are recorded in its cache
            self._compile_records = (use_persistent_inductor_cache(cache_dir),
                                     _compile_settings(mode, fullgraph, decoder, kwargs))
        self._set_memory_format(True, self.unet)  # inductor's fused kernels gain from it (the measured setting)
        self._denoiser = torch.compile(self.unet, mode=mode, backend=backend, fullgraph=fullgraph, dynamic=False,
                                       **kwargs)
        self.uses_cuda_graphs = backend == "inductor" and _mode_uses_cuda_graphs(mode, kwargs.get("options"))
        self._grow_static_batch = True
        self._compiled_decode = None
        if decoder:
            self._compiled_decode = torch.compile(self._decode_scaled, backend=backend, fullgraph=fullgraph,
                                                  dynamic=False, **_without_cuda_graphs(mode, kwargs))

    def scheduler(self):
        """A fresh scheduler built from the base scheduler config: DPM-Solver++ multistep, or ``LCMScheduler``
        when :attr:`sampler` is ``"lcm"`` (set by :meth:`load_lcm_lora`)."""
        from diffusers import DPMSolverMultistepScheduler, LCMScheduler

        if self.sampler == "lcm":
            return LCMScheduler.from_config(self.scheduler_config)
        if self.sampler != "dpm":
            raise ValueError(f"sampler must be 'dpm' or 'lcm', got {self.sampler!r}")
        return DPMSolverMultistepScheduler.from_config(self.scheduler_config)

    def _adapter_scales(self, reference_scale: float | None) -> dict[str, float]:
        """The LoRA adapters (and their scales) of a denoising loop: the reference LoRA when a reference is used,
        the LCM-LoRA when loaded."""
        scales = {}
        if reference_scale is not None and self.has_reference_adapter:
            scales[REFERENCE_ADAPTER_NAME] = float(reference_scale)
        if self.has_lcm_adapter:
            scales[LCM_ADAPTER_NAME] = 1.0
        return scales

    # ------------------------------------------------------------------------------------------------------------
    # Conditioning

    def encode_identity(self, id_embeds) -> torch.Tensor:
        """Raw ArcFace vectors ``[512]`` or ``[B, 512]`` -> prompt embeddings ``[B, 77, C]`` (last one cached)."""
        id_embeds = torch.as_tensor(np.asarray(id_embeds, dtype=np.float32) if not isinstance(id_embeds, torch.Tensor) else id_embeds)
        if id_embeds.ndim == 1:
            id_embeds = id_embeds[None]
        key = _digest(id_embeds.float())
        if self._identity_cache is None or self._identity_cache[0] != key:
            norms = id_embeds.float().norm(dim=-1)
            if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
                raise ValueError("id_embeds must be finite, non-zero ArcFace vectors (a zero or NaN row has no "
                                 "identity)")
            unique, inverse = torch.unique(id_embeds.float().cpu(), dim=0, return_inverse=True)
            prompts = self.identity_encoder.encode(unique).to(self.dtype)
            self._identity_cache = (key, prompts[inverse.to(prompts.device)])
        return self._identity_cache[1]

    def _reference_pixels(self, reference_image) -> torch.Tensor:
        """One image or a batch of images -> ``[R, 3, S, S]`` in [-1, 1] at the model's resolution."""
        if isinstance(reference_image, (list, tuple)):
            images = list(reference_image)
        elif isinstance(reference_image, np.ndarray) and reference_image.ndim == 4:
            images = list(reference_image)
        else:
            images = [reference_image]
        size = self.image_size
        arrays = []
        for image in images:
            if isinstance(image, Image.Image):
                image = image.convert("RGB")
            else:
                image = np.asarray(image)
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                    raise ValueError(f"reference images must be HxWx3 uint8 arrays or PIL images, got {image.dtype} {image.shape}")
                image = Image.fromarray(image)
            if image.size != (size, size):
                image = image.resize((size, size), Image.LANCZOS)
            arrays.append(np.asarray(image))
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return pixels

    @torch.no_grad()
    def encode_reference(self, reference_image, id_prompt: torch.Tensor) -> ReferenceBank:
        """Run the reference pass once and return its per-layer tokens (cached for the same inputs).

        The aligned reference is encoded with the VAE latent *mean* (deterministic), then the Arc2Face UNet runs
        at timestep 0 conditioned on the identity prompt with both adapters off, recording every ``attn1`` input.
        ``id_prompt`` is ``[1, 77, C]`` (shared) or ``[R, 77, C]`` (one per reference).
        """
        if not self.has_reference_adapter:
            raise WeightsError(f"a reference image needs the Reference Adapter ({REFERENCE_LORA_FILE} in the models "
                               "folder), which this pipeline was loaded without; render without a reference instead")
        pixels = self._reference_pixels(reference_image)
        if pixels.shape[0] == 1 and id_prompt.shape[0] > 1:
            pixels = pixels.expand(id_prompt.shape[0], -1, -1, -1)
        if id_prompt.shape[0] == 1 and pixels.shape[0] > 1:
            id_prompt = id_prompt.expand(pixels.shape[0], -1, -1)
        if pixels.shape[0] != id_prompt.shape[0]:
            raise ValueError(f"{pixels.shape[0]} reference images for {id_prompt.shape[0]} identities")
        key = _digest(pixels, id_prompt.float())
        if self._reference_cache is not None and self._reference_cache[0] == key:
            return self._reference_cache[1]

        latents = []
        for chunk in pixels.split(self.vae_batch_size):
            posterior = self.vae.encode(chunk.to(self.device, self.vae_dtype)).latent_dist
            latents.append(posterior.mean * self.vae.config.scaling_factor)
        latents = torch.cat(latents).to(self.dtype)

        self.adapters.apply({})
        recording: dict[str, torch.Tensor] = {}
        self.context.recording, self.context.expression_tokens, self.context.reference = recording, None, None
        try:
            timestep = torch.zeros(latents.shape[0], device=self.device, dtype=torch.long)
            self.unet(latents, timestep, encoder_hidden_states=id_prompt.to(self.dtype), return_dict=False)
        finally:
            self.context.recording = None
        bank = ReferenceBank(recording, cache_kv=True)
        self._reference_cache = (key, bank)
        return bank

    # ------------------------------------------------------------------------------------------------------------
    # Rendering

    def _prepare_attention(self, prompts, expression_tokens, expression_scale: float, bank, reference_rows) -> None:
        """Hand every processor its per-loop tensors (``prompts`` None: clear them all).

        Cross-attention: keys/values of ``prompts [rows, 77, C]`` and of the expression tokens scaled by
        ``expression_scale``. Self-attention: keys/values of the bank's reference tokens under the current
        weights (cached in the bank until the adapters change) for the batch rows ``reference_rows``.
        """
        if bank is not None and self._bank_version != (id(bank), self.adapters.version):
            bank.invalidate()
            self._bank_version = (id(bank), self.adapters.version)
        for module in self.unet.modules():
            processor = getattr(module, "processor", None)
            if isinstance(processor, ExpressionCrossAttnProcessor):
                processor.prepare(module, prompts, expression_tokens, expression_scale)
            elif isinstance(processor, ReferenceSelfAttnProcessor):
                kv = None if bank is None or prompts is None else bank.key_value(processor.name, module)
                processor.prepare(kv, reference_rows)

    def prepare_latents(self, batch: int, latents=None, generator=None, per_frame_noise: bool = False) -> torch.Tensor:
        """Initial noise ``[B, C, h, w]``: given, or drawn from ``generator`` (shared by all frames by default)."""
        shape = self.latent_shape
        if latents is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            rows = batch if per_frame_noise else 1
            latents = torch.randn((rows, *shape), generator=generator, device=gen_device, dtype=torch.float32)
            latents = latents.expand(batch, *shape)
        latents = torch.as_tensor(latents)
        if tuple(latents.shape) != (batch, *shape):
            raise ValueError(f"latents must be [{batch}, {', '.join(map(str, shape))}], got {list(latents.shape)}")
        return latents.to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1], float32, decoded in VAE batches of
        :attr:`vae_batch_size` (compiled after ``compile(decoder=True)``, each batch padded to that size)."""
        return torch.cat([self._decode_batch(chunk) for chunk in latents.split(self.vae_batch_size)])

    def _decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """One VAE batch: compiled after ``compile(decoder=True)`` (padded to :attr:`vae_batch_size` rows, so one
        graph serves every batch), else eager. A compile that fails gives compiling up, as in :meth:`_predict_noise`."""
        if self._compiled_decode is not None:
            rows, failure = latents.shape[0], None
            try:
                return self._compiled_decode(_pad_rows(latents, self.vae_batch_size))[:rows]
            except torch._dynamo.exc.TorchDynamoException as error:
                failure = _compile_failure_line(error)
            self._give_up_compiling(failure)
        return self._decode_scaled(latents)

    def _decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1], float32 (the VAE in
        :attr:`vae_dtype`)."""
        images = self.vae.decode(latents.to(self.vae_dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(self, id_embeds, expressions, reference_image=None, reference_scale: float = 0.8,
                 expression_scale: float = 1.0, num_inference_steps: int = 25, guidance_scale: float = 3.0,
                 latents=None, generator=None, output_type: str = "np", per_frame_noise: bool = False,
                 progress: bool = False) -> ExpressionPipelineOutput:
        """Render ``B`` faces.

        ``id_embeds``: raw ArcFace ``[512]`` (one identity) or ``[B, 512]`` (normalised inside).
        ``expressions``: ``[B, 55]`` FLAME values (expression 50, eyelid 2, jaw 3), one row per frame.
        ``reference_image``: aligned face (``HxWx3`` uint8 or PIL; resized to :attr:`image_size` if needed), a
        list of ``B`` of them (one per frame), or None (reference adapter fully off: no LoRA, no reference
        attention). ``reference_scale``: weight of the reference LoRA. ``expression_scale``: weight of the
        expression branch (0 equals the adapter off). ``guidance_scale``: CFG weight; 1 skips the unconditional
        pass. ``latents``: initial noise ``[B, 4, h, w]``; else drawn from ``generator``, the same for every frame
        unless ``per_frame_noise``. Returns images in ``output_type`` "np", "uint8" (rounded on the device, see
        :func:`to_uint8`), "pil" or "pt", or with "latent" the final latents ``[B, 4, h, w]`` (not decoded).
        ``progress``: a bar over the denoising steps (``tqdm.auto``), shown from the first step that ends
        :data:`STEP_BAR_DELAY_S` seconds or more after the loop started.

        A batch smaller than :attr:`static_batch_size` runs padded to that size (its last frame repeated) and only
        its ``B`` frames are returned. With the LCM sampler, the noise added at each step is drawn per frame from a
        seed of that frame's initial noise.
        """
        if output_type not in ("np", "uint8", "pil", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'uint8', 'pil', 'pt' or 'latent', got {output_type!r}")
        expressions = torch.as_tensor(np.asarray(expressions, dtype=np.float32) if not isinstance(expressions, torch.Tensor) else expressions)
        if expressions.ndim == 1:
            expressions = expressions[None]
        n_values = self.expression_projection.n_values
        if expressions.ndim != 2 or expressions.shape[1] != n_values:
            raise ValueError(f"expressions must be [B, {n_values}], got {list(expressions.shape)}")
        if not bool(torch.isfinite(expressions).all()):
            raise ValueError("expressions hold NaN or infinite values")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number >= 1, got {num_inference_steps!r}")
        batch = expressions.shape[0]
        if isinstance(reference_image, np.ndarray) and reference_image.ndim == 4:
            reference_image = list(reference_image)
        if isinstance(reference_image, (list, tuple)) and len(reference_image) not in (1, batch):
            raise ValueError(f"{len(reference_image)} reference images for a batch of {batch} (give 1 or {batch})")
        id_prompt = self.encode_identity(id_embeds)
        if id_prompt.shape[0] not in (1, batch):
            raise ValueError(f"{id_prompt.shape[0]} identities for {batch} expressions")
        latents = self.prepare_latents(batch, latents, generator, per_frame_noise)

        # Pad to the static batch size: extra rows repeat the last frame and are dropped after the loop.
        rows = max(batch, self.static_batch_size)
        if self._grow_static_batch:
            self.static_batch_size = rows
        expressions, latents = _pad_rows(expressions, rows), _pad_rows(latents, rows)
        if id_prompt.shape[0] > 1:
            id_prompt = _pad_rows(id_prompt, rows)
        if isinstance(reference_image, (list, tuple)) and 1 < len(reference_image) < rows:
            reference_image = list(reference_image) + [reference_image[-1]] * (rows - len(reference_image))

        do_cfg = guidance_scale > 1.0
        cond_prompt = id_prompt.expand(rows, -1, -1) if id_prompt.shape[0] == 1 else id_prompt
        expression_tokens = self.expression_projection(expressions.to(self.device, self.dtype))
        if do_cfg:
            prompts = torch.cat([self._empty_prompt.expand(rows, -1, -1), cond_prompt])
            expression_tokens = torch.cat([self._neutral_tokens.expand(rows, -1, -1), expression_tokens])
        else:
            prompts = cond_prompt

        bank = None
        if reference_image is not None:
            bank = self.encode_reference(reference_image, id_prompt)
            if bank.num_references not in (1, rows):
                raise ValueError(f"{bank.num_references} references for a batch of {batch}")
        self.adapters.apply(self._adapter_scales(reference_scale if bank is not None else None))
        reference_rows = (rows, 2 * rows) if do_cfg else (0, rows)
        self._prepare_attention(prompts, expression_tokens, float(expression_scale), bank, reference_rows)

        scheduler = self.scheduler()
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        # Samplers that add noise at each step (LCM) draw it per frame from a seed of the frame's initial noise,
        # so a frame's result does not depend on its batch, and frames sharing their noise share it too.
        step_generators = [torch.Generator().manual_seed(_row_seed(row)) for row in latents]
        latents = latents * scheduler.init_noise_sigma
        if self._denoiser is not None and (rows, do_cfg, bank is not None) not in self._compiled_inputs:
            self._compiled_inputs.add((rows, do_cfg, bank is not None))
            compile_log.info("compiling the UNet for batches of %d (the first time on this machine takes a minute or "
                             "more; later runs load it from %s)", rows,
                             os.environ.get("TORCHINDUCTOR_CACHE_DIR", "the cache"))
        steps = scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="denoising", unit="step", leave=False, delay=STEP_BAR_DELAY_S)
        try:
            for t in steps:
                model_input = torch.cat([latents, latents]) if do_cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                noise = self._predict_noise(model_input, t, prompts)
                if do_cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + guidance_scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents, generator=step_generators, return_dict=False)[0]
        finally:
            self._prepare_attention(None, None, 1.0, None, None)
        if self._denoiser is not None and self._compile_records is not None:
            self._record_compiled(rows, do_cfg, bank is not None)

        latents = latents[:batch]
        if output_type == "latent":
            return ExpressionPipelineOutput(latents)
        images = self.decode(latents)
        if output_type == "pt":
            return ExpressionPipelineOutput(images)
        if output_type == "uint8":  # quantised where the images are: a quarter of the bytes to copy to the host
            return ExpressionPipelineOutput(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy())
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return ExpressionPipelineOutput(array)
        if output_type == "pil":
            return ExpressionPipelineOutput([Image.fromarray((a * 255).round().astype(np.uint8)) for a in array])
        raise AssertionError(output_type)  # checked above

    def _predict_noise(self, sample: torch.Tensor, timestep, prompts: torch.Tensor) -> torch.Tensor:
        """One UNet evaluation of the denoising loop: compiled after :meth:`compile`, else eager. A compile that
        fails gives compiling up for good (see :meth:`compile`) and this step runs eagerly."""
        if self._denoiser is not None:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA graphs ("reduce-overhead") reuse buffers
            failure = None
            try:
                return self._denoiser(sample, timestep, encoder_hidden_states=prompts, return_dict=False)[0]
            except torch._dynamo.exc.TorchDynamoException as error:  # the backend (BackendCompilerFailed) or
                failure = _compile_failure_line(error)  # dynamo's own tracing failed: eager repeats a real error
            self._give_up_compiling(failure)  # outside the handler: the failed attempt's frames are let go
        return self.unet(sample, timestep, encoder_hidden_states=prompts, return_dict=False)[0]

    def _graph_description(self, rows: int, guidance: bool, reference: bool, settings: dict) -> dict:
        """What decides the compiled UNet graph of a denoising loop (and inductor's key for it): the releases, the
        device, dtype, model shapes and attention code, the loop's ``rows`` (after padding), guidance and reference
        on or off, and the compile ``settings``. The description a record is kept under (see :meth:`compile`)."""
        from .models import attention
        from .models.compile_records import source_digest

        fused = any(p.qkv_weight is not None for p in self.unet.attn_processors.values()
                    if isinstance(p, ReferenceSelfAttnProcessor))
        return {"torch": torch.__version__, "triton": _package_version("triton"), "device": _device_label(self.device),
                "dtype": str(self.dtype), "unet": dict(self.unet.config),
                "expression_tokens": list(self._neutral_tokens.shape[1:]), "fused_qkv": fused,
                "code": source_digest(attention, sys.modules[__name__]),
                "rows": int(rows), "guidance": bool(guidance), "reference": bool(reference), "compile": settings}

    def compiled_before(self, rows: int, guidance_scale: float, reference: bool, mode: str | None = None,
                        fullgraph: bool = False, decoder: bool = False, cache_dir=None, **kwargs) -> bool:
        """Whether ``compile(mode, ...)`` (inductor) then a loop of ``rows`` rows (the batch, or the padded batch
        size), with ``guidance_scale`` and with or without a reference, was recorded as compiled into the persistent
        cache on this machine: its compile would be a load from the cache (seconds), not a first compile."""
        from .models.compile_records import has_record

        settings = _compile_settings(mode, fullgraph, decoder, kwargs)
        return has_record(persistent_inductor_cache_dir(cache_dir),
                          self._graph_description(rows, guidance_scale > 1.0, reference, settings))

    def _record_compiled(self, rows: int, guidance: bool, reference: bool) -> None:
        """Record a finished compiled loop's graph in the inductor cache folder (once per shape and process)."""
        from .models.compile_records import write_record

        if (rows, guidance, reference) in self._recorded_inputs:
            return
        self._recorded_inputs.add((rows, guidance, reference))
        cache, settings = self._compile_records
        try:
            write_record(cache, self._graph_description(rows, guidance, reference, settings))
        except OSError as error:  # a record only saves a later job's choice: never fail a render for it
            log.debug("could not record the compiled graph in %s: %s", cache, error)

    def _give_up_compiling(self, reason: str) -> None:
        """Render eagerly from now on (eager layout, no padding to a static batch), saying why once."""
        compile_log.warning("torch.compile failed (%s); rendering without it", reason)
        self.compile_failure = reason
        self._denoiser = None
        self._compiled_decode = None
        self._compile_records = None
        self.uses_cuda_graphs = False
        self._grow_static_batch = False
        self.static_batch_size = 0
        self._compiled_inputs.clear()
        self._set_memory_format(False, self.unet)

    def warm_up(self, frames: int, guidance_scale: float = 3.0, reference: str | None = "shared",
                reference_scale: float = 0.8, decode: bool = True) -> None:
        """Pay the one-time costs of the first batch now: run one denoising step on a stand-in batch shaped like
        a job's first batch (and decode it with ``decode``), e.g. on a background thread while a clip is scanned.

        The one-time costs are CUDA's kernel loading and library set-up and, after :meth:`compile`, the compile
        (or its load from the cache) for this batch shape. ``frames``: the job's first batch (the batch size, or
        fewer for a shorter clip). ``reference``: ``"shared"`` (one reference image for every frame, as ``run``
        passes), ``"per_frame"`` (one per frame, as ``edit`` passes) or None (no reference). The stand-in inputs
        (grey reference, zero expressions, zero noise) leave nothing behind that changes later results: the
        identity and reference caches are cleared, the adapters are set again by the next call, and
        :attr:`static_batch_size` is restored (a first real batch of another size only misses the warm-up).
        """
        if reference not in ("shared", "per_frame", None):
            raise ValueError(f"reference must be 'shared', 'per_frame' or None, got {reference!r}")
        size = self.image_size
        grey = np.full((size, size, 3), 128, np.uint8)
        references = None if reference is None else grey if reference == "shared" else [grey] * frames
        identity = torch.zeros(ARCFACE_DIM)
        identity[0] = 1.0
        static_batch_size = self.static_batch_size
        try:
            self(identity, torch.zeros(frames, self.expression_projection.n_values), reference_image=references,
                 reference_scale=reference_scale, num_inference_steps=1, guidance_scale=guidance_scale,
                 latents=torch.zeros(frames, *self.latent_shape), output_type="uint8" if decode else "latent")
        finally:
            self._identity_cache = self._reference_cache = self._bank_version = None
            self.static_batch_size = static_batch_size
