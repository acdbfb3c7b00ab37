"""The training loop both stages share: options, accelerate setup, batches, checkpoints, resume and logging.

A stage supplies a *training module*: an ``nn.Module`` whose ``forward(batch, generator=None)`` returns the
scalar loss of one batch, whose trainable parameters are the only ones with ``requires_grad``, and which has
``trainable_state_dict()`` naming those parameters (checkpoints save and restore exactly them). The loop owns everything
else: devices and mixed precision, data order, AdamW, gradient accumulation, clipping, checkpoints
(``OUT/checkpoints/step-<N>``, trainable weights only), resume, loss logging, and the final export.

Reproducibility: the module is built right after ``set_seed(seed)`` (same initial weights on every process);
each process then draws noise from ``seed + process index``; the data order comes from ``(seed, epoch)``; a
checkpoint holds the random states of every process, so a resumed run continues exactly as the uninterrupted
one would (same device and settings; a checkpoint records the settings, see :data:`RUN_SETTINGS`, and resuming
with other values names them in a warning and goes on with the new ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from retarget.errors import InputError

from .data import epoch_batches

log = logging.getLogger("train")

CHECKPOINTS_DIR = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
PROGRESS_FILE = "progress.json"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainingOptions:
    """Options common to both stages (see :func:`add_common_arguments` for their meaning)."""

    data: Path
    models: Path
    output: Path
    base_model: str | None = None
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    resolution: int = 512
    mixed_precision: str = "no"
    gradient_accumulation: int = 1
    checkpointing_steps: int = 1000
    resume: str | None = None
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    report_to: str | None = None
    condition_dropout: float = 0.1
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainingOptions":
        names = cls.__dataclass_fields__
        values = {k: v for k, v in vars(args).items() if k in names}
        for key in ("data", "models", "output"):
            values[key] = Path(values[key])
        return cls(**values)


def add_common_arguments(parser: argparse.ArgumentParser, lr: float, condition_dropout: float) -> None:
    """The options both stages take; ``lr`` and ``condition_dropout`` are the stage's defaults."""
    parser.add_argument("--data", required=True, help="annotated data folder (python -m train.annotate)")
    parser.add_argument("--models", required=True, help="published models/ folder (arc2face/, encoder/, ...)")
    parser.add_argument("--base-model", help="SD1.5 folder or hub id for vae/, tokenizer/, scheduler/")
    parser.add_argument("--output", required=True, help="output folder (weights, checkpoints, logs)")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps in total (default 1000)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per process per step (default 8)")
    parser.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr:g})")
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default 1)")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution in pixels (default 512)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                        help="autocast and frozen weights in this precision; trained weights stay fp32")
    parser.add_argument("--gradient-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--checkpointing-steps", type=int, default=1000,
                        help="save a resumable checkpoint every N steps (default 1000)")
    parser.add_argument("--resume", help="checkpoint folder to continue from, or 'latest' (newest under "
                                         "OUTPUT/checkpoints; a fresh start when there is none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading processes per GPU (default 2)")
    parser.add_argument("--log-every", type=int, default=10, help="log the loss every N steps (default 10)")
    parser.add_argument("--report-to", choices=("tensorboard",), help="also log to tensorboard (OUTPUT/logs)")
    parser.add_argument("--condition-dropout", type=float, default=condition_dropout,
                        help=f"probability that a sample trains the unconditional branch (default {condition_dropout})")


def validate(options: TrainingOptions, image_size: int) -> None:
    """Raise InputError for option values no run can use."""
    checks = [
        (options.max_steps > 0, f"--max-steps must be positive, got {options.max_steps}"),
        (options.batch_size > 0, f"--batch-size must be positive, got {options.batch_size}"),
        (options.gradient_accumulation > 0, "--gradient-accumulation must be positive"),
        (options.checkpointing_steps > 0, "--checkpointing-steps must be positive"),
        (options.lr > 0, f"--lr must be positive, got {options.lr}"),
        (0 <= options.condition_dropout < 1, "--condition-dropout must be in [0, 1)"),
        (options.resolution == image_size,
         f"--resolution {options.resolution} does not match the model, which works at {image_size} px"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def check_reporting(options: TrainingOptions) -> None:
    """Raise InputError when the requested loss tracker is not installed (tensorboard is optional)."""
    import importlib.util

    if options.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise InputError("--report-to tensorboard needs the tensorboard package (pip install tensorboard)")


def saved_checkpoints(output: Path) -> list[Path]:
    """The finished checkpoints ``OUTPUT/checkpoints/step-N``, oldest first (a save in progress is written under
    another name and renamed when complete, see :func:`run_training`)."""
    folder = output / CHECKPOINTS_DIR
    found = [(int(m[1]), p) for p in folder.glob("step-*") if (m := _CHECKPOINT_NAME.match(p.name))
             and (p / PROGRESS_FILE).is_file()] if folder.is_dir() else []
    return [path for _, path in sorted(found)]


def find_checkpoint(output: Path, resume: str | None) -> Path | None:
    """The checkpoint folder ``--resume`` names: a path, the newest ``step-N`` for 'latest', or None.

    Raises InputError for an ``output`` that is a file, for a path that is not a checkpoint, and for a run that does
    not resume into an output folder that holds checkpoints of an earlier run ('latest' would later mix the two)."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file, not a folder")
    if resume is None:
        earlier = saved_checkpoints(output)
        if earlier:
            raise InputError(f"{output / CHECKPOINTS_DIR} holds checkpoints of an earlier run (newest "
                             f"{earlier[-1].name}); continue it with --resume latest, or give another --output")
        return None
    if resume == "latest":
        found = saved_checkpoints(output)
        if not found:
            log.info("no checkpoint under %s: starting at step 0", output / CHECKPOINTS_DIR)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / PROGRESS_FILE).is_file():
        raise InputError(f"--resume {resume}: not a checkpoint folder (no {PROGRESS_FILE})")
    return path


#: The options that decide what a step computes; a checkpoint records them, and resuming with other values is named
#: in a warning (the run goes on with the new values, so it no longer repeats the uninterrupted one).
RUN_SETTINGS = ("data", "batch_size", "gradient_accumulation", "lr", "weight_decay", "max_grad_norm", "seed",
                "resolution", "condition_dropout", "mixed_precision")


def run_settings(options: TrainingOptions, num_processes: int) -> dict:
    """The values of :data:`RUN_SETTINGS` (``data`` as an absolute path) and the number of processes."""
    values = {name: getattr(options, name) for name in RUN_SETTINGS}
    values["data"] = str(Path(options.data).resolve())
    values["processes"] = int(num_processes)
    return values


def changed_settings(saved: dict, current: dict) -> list[str]:
    """``--option NEW (checkpoint: OLD)`` for each setting of ``current`` whose value differs from ``saved``'s."""
    changes = []
    for name, value in current.items():
        if name in saved and saved[name] != value:
            label = "processes" if name == "processes" else "--" + name.replace("_", "-")
            changes.append(f"{label} {value} (checkpoint: {saved[name]})")
    return changes


def resume_from(accelerator, checkpoint: Path) -> None:
    """``accelerator.load_state(checkpoint)``, with a damaged or incomplete checkpoint as one InputError."""
    try:
        accelerator.load_state(str(checkpoint))
    except InputError:
        raise
    except Exception as error:  # a file missing, truncated or not what it should be
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot resume from {checkpoint}: {detail} (give an earlier checkpoint with "
                         "--resume PATH)") from error


@dataclass
class TrainingResult:
    """What a run did: steps ``start_step + 1 .. step``, ``losses[i]`` the mean loss of step ``start_step + i + 1``
    (over accumulation and processes), the exported file (main process), and the trained ``module`` (unwrapped)."""

    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)
    output: Path | None = None
    module: nn.Module | None = None


def load_trainable(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy a checkpoint's tensors into ``module.trainable_state_dict()``; the names must match exactly."""
    params = module.trainable_state_dict()
    if set(state) != set(params):
        raise InputError(f"{path} holds {len(state)} trained tensors, this stage trains {len(params)}")
    for name, param in params.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise InputError(f"{path}: '{name}' is {list(state[name].shape)}, this run trains "
                             f"{list(param.shape)} (the checkpoint was trained with other settings)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def _has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator (where fp16 autocast works; the CPU's does not cover it)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def _cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Store frozen parameters in ``dtype`` (memory); trainable ones stay fp32 for the optimizer."""
    for param in module.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)


def run_training(options: TrainingOptions, stage: str,
                 build: Callable[[TrainingOptions], tuple[nn.Module, torch.utils.data.Dataset]],
                 export: Callable[[nn.Module, Path], Path]) -> TrainingResult:
    """Train the module ``build(options)`` returns on its dataset and ``export`` it to ``options.output``.

    ``stage`` names the run in logs. Returns the steps run and their losses, and the exported file.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from safetensors.torch import load_file, save_file

    output = options.output
    check_reporting(options)
    checkpoint = find_checkpoint(output, options.resume)
    if options.mixed_precision == "fp16" and not _has_accelerator():
        raise InputError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")
    accelerator = Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.gradient_accumulation,
        log_with="tensorboard" if options.report_to else None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    set_seed(options.seed)
    module, dataset = build(options)
    module.to(accelerator.device)
    _cast_frozen(module, _weight_dtype(options.mixed_precision))
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    model, optimizer = accelerator.prepare(module, optimizer)
    set_seed(options.seed, device_specific=True)

    progress = {"step": 0, "settings": None}
    settings = run_settings(options, accelerator.num_processes)

    def save_hook(models, weights, folder):
        weights.clear()  # the frozen backbone is not checkpointed, only the trained tensors
        if accelerator.is_main_process:
            state = {k: v.detach().float().cpu().contiguous() for k, v in module.trainable_state_dict().items()}
            save_file(state, str(Path(folder) / TRAINABLE_FILE))
            (Path(folder) / PROGRESS_FILE).write_text(json.dumps({"stage": stage, "step": progress["step"],
                                                                  "settings": settings}))

    def load_hook(models, folder):
        models.clear()
        info = json.loads((Path(folder) / PROGRESS_FILE).read_text())
        if info.get("stage") != stage:
            raise InputError(f"{folder} is a checkpoint of {info.get('stage')}, not of {stage}")
        load_trainable(module, load_file(str(Path(folder) / TRAINABLE_FILE)), Path(folder) / TRAINABLE_FILE)
        progress["step"], progress["settings"] = int(info["step"]), info.get("settings")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    if checkpoint is not None:
        resume_from(accelerator, checkpoint)
        for group in optimizer.param_groups:  # the checkpoint's optimizer state holds the old values
            group["lr"], group["weight_decay"] = options.lr, options.weight_decay
        changes = changed_settings(progress["settings"] or {}, settings) if accelerator.is_main_process else []
        if not (checkpoint / f"random_states_{accelerator.process_index}.pkl").is_file():
            changes.append(f"no random state for process {accelerator.process_index}")
        if accelerator.is_main_process:
            log.info("resumed from %s at step %d", checkpoint, progress["step"])
        if changes:
            log.warning("resuming %s with other settings than it was saved with: %s; this run goes on with the new "
                        "ones, so it does not repeat the uninterrupted run", checkpoint, ", ".join(changes))
    result = TrainingResult(start_step=progress["step"], step=progress["step"])

    if options.report_to:
        accelerator.init_trackers(stage, config={k: str(v) for k, v in vars(options).items()})

    accum = options.gradient_accumulation
    batches_per_epoch = len(epoch_batches(len(dataset), options.batch_size, options.seed, 0,
                                          accelerator.num_processes, accelerator.process_index))
    consumed = progress["step"] * accum
    epoch, skip = divmod(consumed, batches_per_epoch)
    loss_sum = torch.zeros((), device=accelerator.device)
    last_saved = progress["step"]

    def save_checkpoint():
        # Written under another name and renamed once every process has written its part, so a run stopped during
        # a save leaves no folder that --resume latest would take for a checkpoint.
        nonlocal last_saved
        folder = output / CHECKPOINTS_DIR / f"step-{progress['step']}"
        partial = folder.with_name(folder.name + ".partial")
        if accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)  # left by a run stopped during this save
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(partial, folder)
            log.info("saved %s", folder)
        last_saved = progress["step"]

    while progress["step"] < options.max_steps:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), options.batch_size, options.seed, epoch,
                                accelerator.num_processes, accelerator.process_index)[skip:]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=options.num_workers,
                                             generator=torch.Generator(), persistent_workers=False)
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(batch)
                loss_sum += loss.detach()
                accelerator.backward(loss)
                if accelerator.sync_gradients and options.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, options.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            progress["step"] += 1
            step_loss = accelerator.reduce(loss_sum / accum, reduction="mean").item()
            loss_sum.zero_()
            if not math.isfinite(step_loss):
                raise InputError(f"the loss became {step_loss} at step {progress['step']}; lower --lr or use "
                                 "--mixed-precision bf16 instead of fp16")
            result.losses.append(step_loss)
            if options.report_to:
                accelerator.log({"loss": step_loss}, step=progress["step"])
            if accelerator.is_main_process and (progress["step"] % options.log_every == 0
                                                or progress["step"] == options.max_steps):
                log.info("%s step %d/%d loss %.5f", stage, progress["step"], options.max_steps, step_loss)
            if progress["step"] % options.checkpointing_steps == 0:
                save_checkpoint()
            if progress["step"] >= options.max_steps:
                break
        epoch, skip = epoch + 1, 0

    if last_saved != progress["step"]:
        save_checkpoint()
    accelerator.wait_for_everyone()
    result.step = progress["step"]
    result.module = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        result.output = export(accelerator.unwrap_model(model), output)
        log.info("wrote %s", result.output)
    accelerator.end_training()
    return result
