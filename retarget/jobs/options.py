"""The common options of every rendering job, as one dataclass (built from the command line or by hand).

``JobOptions`` is the single place a job reads its settings from; the command line fills it with
:func:`retarget.cli.options_from_args`, Python callers construct it directly::

    from retarget.jobs.options import JobOptions
    from retarget.jobs.run import run_job
    run_job("driving.mp4", "photo.jpg", "out.mp4", JobOptions(models="models", steps=25))
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retarget.errors import InputError
from retarget.jobs.common import MEMORY_BUDGET_GIB
from retarget.motion.adjust import PartGains
from retarget.video.encoding import EncoderSettings
from retarget.video.resume import file_identity

SMOOTHING_METHODS = ("kalman", "savgol", "one_euro", "none")
#: ``torch.compile`` modes for ``compile_mode`` ("default" = inductor's default; "reduce-overhead" adds CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SMIRK_CHANNELS = ("rgb", "bgr")
DTYPES = ("fp32", "fp16", "bf16")
#: The largest ``seed``: per-frame noise seeds ``seed * 1_000_003 + frame`` (see :func:`retarget.pipeline.clip_noise`)
#: must stay within the 64 bits of a torch generator's seed.
MAX_SEED = 2**40 - 1


def default_models_dir() -> Path:
    """``$RETARGET_MODELS`` or ``./models``."""
    return Path(os.environ.get("RETARGET_MODELS") or "models")


@dataclass
class JobOptions:
    """Settings shared by ``run``, ``edit``, ``extract`` and ``batch``.

    Model: ``models`` (published layout), ``base_model`` (SD1.5 folder or hub id; ``None`` = ``$RETARGET_BASE_MODEL``
    or the public SD1.5 repository), ``device``/``dtype`` (``None`` = CUDA + bf16/fp16 when available, else CPU fp32).
    Sampling: ``steps``, ``guidance`` (CFG), ``expression_scale``, ``reference_scale``, ``seed``, ``per_frame_noise``
    (default: the same initial noise for every frame, which keeps the clip stable).
    Throughput: ``batch_size`` frames per diffusion call (``None``: :func:`~retarget.devices.default_batch_size` of
    the job's device, 16 on a GPU with at least 12 GiB, else 8; an int once constructed), ``chunk_size`` the most
    frames per resumable chunk (memory holds one chunk of frames at a time), ``memory_budget`` GiB of host memory
    beyond the models for one chunk's frames and the work on single frames (caps the chunk length at large picture
    sizes, see :func:`retarget.jobs.common.chunk_frames`), ``overlap`` (default True: load the pipeline during the
    face scan and decode, render, paste and encode on worker threads at once, see :mod:`retarget.jobs.stages`; False
    runs the same stages one after another; the output is the same).
    Motion: ``smooth`` (one of :data:`SMOOTHING_METHODS`); ``relative`` (transfer the driving clip's changes from
    its neutral frame onto the target's own expression, see :mod:`retarget.jobs.expressions`) with
    ``neutral_frame`` (a frame number of the driving clip or expression source; ``None`` = the lowest-energy valid
    frame); ``gains`` (per-part multipliers of the transferred motion).
    Faces: ``face_index`` (0 = largest face in the first frame that has faces; that face is then followed through
    the clip) or ``face_reference`` (a photo of the person to follow, matched by ArcFace similarity);
    ``smirk_channels`` (:data:`SMIRK_CHANNELS`: the channel order of SMIRK's input crop, "rgb" as SMIRK expects or
    "bgr" as the published demo feeds it; it changes the expressions read, so it is part of the render key).
    Pipeline: ``compile`` (``torch.compile`` the UNet, in ``compile_mode``, one of :data:`COMPILE_MODES`; None,
    the default: on CUDA for jobs of many frames, see :func:`retarget.jobs.session.compile_chosen`; timing only,
    not part of the render key), ``vae_fp32`` (VAE in fp32), ``lcm_lora`` (an SD1.5
    LCM-LoRA file: few-step sampling with the LCM scheduler). Paste-back (``edit``):
    ``color_match`` (match the generated face's colour statistics to the original face). Output: ``encoder``;
    ``watermark`` (embed the invisible provenance mark in every output frame, see :mod:`retarget.provenance`).
    """

    models: Path = field(default_factory=default_models_dir)
    base_model: str | None = None
    steps: int = 25
    guidance: float = 3.0
    expression_scale: float = 1.0
    reference_scale: float = 0.8
    seed: int = 0
    per_frame_noise: bool = False
    batch_size: int | None = None
    chunk_size: int = 64
    overlap: bool = True
    memory_budget: float = MEMORY_BUDGET_GIB
    device: str | None = None
    dtype: str | None = None
    smooth: str = "kalman"
    relative: bool = False
    neutral_frame: int | None = None
    gains: PartGains = field(default_factory=PartGains)
    face_index: int = 0
    face_reference: Path | None = None
    smirk_channels: str = "rgb"
    compile: bool | None = None
    compile_mode: str = "default"
    lcm_lora: Path | None = None
    vae_fp32: bool = False
    color_match: bool = False
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    watermark: bool = True
    progress: bool = True

    def __post_init__(self):
        self.models = Path(self.models).expanduser()
        if self.face_reference is not None:
            self.face_reference = Path(self.face_reference).expanduser()
        if self.lcm_lora is not None:
            self.lcm_lora = Path(self.lcm_lora).expanduser()
        if self.base_model is None:
            self.base_model = os.environ.get("RETARGET_BASE_MODEL") or None
        if self.batch_size is None:
            from retarget.devices import default_batch_size, resolve_device

            self.batch_size = default_batch_size(resolve_device(self.device))
        numbers = {"--guidance": self.guidance, "--expression-scale": self.expression_scale,
                   "--reference-scale": self.reference_scale, "--memory-budget": self.memory_budget,
                   "--expression-gain": self.gains.expression, "--eyelid-gain": self.gains.eyelid,
                   "--jaw-gain": self.gains.jaw}
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value}")
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be from 0 to {MAX_SEED}, got {self.seed}"),
            (self.guidance >= 0, f"--guidance must be >= 0, got {self.guidance}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.chunk_size >= 1, f"--chunk-size must be >= 1, got {self.chunk_size}"),
            (self.memory_budget > 0, f"--memory-budget must be > 0 GiB, got {self.memory_budget}"),
            (self.face_index >= 0, f"--face-index must be >= 0, got {self.face_index}"),
            (self.neutral_frame is None or self.neutral_frame >= 0,
             f"--neutral-frame must be >= 0 or auto, got {self.neutral_frame}"),
            (self.neutral_frame is None or self.relative, "--neutral-frame needs --relative"),
            (self.face_reference is None or self.face_index == 0, "use either --face-index or --face-reference"),
            (self.smooth in SMOOTHING_METHODS, f"--smooth must be one of {', '.join(SMOOTHING_METHODS)}"),
            (self.dtype is None or self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
            (self.smirk_channels in SMIRK_CHANNELS, f"--smirk-channels must be one of {', '.join(SMIRK_CHANNELS)}"),
            (self.compile_mode in COMPILE_MODES, f"--compile-mode must be one of {', '.join(COMPILE_MODES)}"),
            (self.lcm_lora is None or self.lcm_lora.is_file(), f"--lcm-lora: no such file: {self.lcm_lora}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def render_key(self) -> dict:
        """The settings that change rendered pixels (a resumed render must match them), JSON-ready; with the
        identity of the model files (``model_files``, see :func:`~retarget.jobs.model_files.model_files_identity`),
        so changed weights start a render over."""
        from retarget.jobs.model_files import model_files_identity

        data = asdict(self)
        for name in ("progress", "batch_size", "overlap", "memory_budget", "models", "encoder", "compile",
                     "compile_mode", "face_reference", "lcm_lora"):
            data.pop(name)
        data["models"] = str(self.models.resolve())
        data["face_reference"] = None if self.face_reference is None else file_identity(self.face_reference)
        data["encoder"] = self.encoder.as_dict()
        data["model_files"] = model_files_identity(self.models, self.base_model)
        data["lcm_lora"] = None if self.lcm_lora is None else file_identity(self.lcm_lora)
        return data
