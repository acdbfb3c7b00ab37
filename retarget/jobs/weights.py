"""The model files: download from the hub into the published layout, manual steps, and ``doctor`` checks.

Published layout (``--models DIR``)::

    arc2face/config.json, arc2face/diffusion_pytorch_model.safetensors   hub: FoivosPar/Arc2Face
    encoder/config.json, encoder/pytorch_model.bin                       hub: FoivosPar/Arc2Face
    exp_adapter/exp_adapter.bin                                          hub: FoivosPar/Arc2Face
    ref_adapter/pytorch_lora_weights.safetensors                         hub: FoivosPar/Arc2Face
    antelopev2/arcface.onnx                                              hub: FoivosPar/Arc2Face (file arcface.onnx)
    antelopev2/scrfd_10g_bnkps.onnx      manual (insightface antelopev2 package); MTCNN is used without it
    smirk/SMIRK_em1.pt                   manual (SMIRK release, Google Drive)
    smirk/face_landmarker.task           manual (MediaPipe model storage)

plus the SD1.5 base folders ``vae/``, ``tokenizer/``, ``scheduler/`` (hub: stable-diffusion-v1-5/stable-diffusion-v1-5),
kept in the huggingface_hub cache and found again by ``--base-model`` / ``$RETARGET_BASE_MODEL``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from retarget.errors import WeightsError

HUB_REPO = "FoivosPar/Arc2Face"


@dataclass(frozen=True)
class WeightFile:
    """One file of the published layout: where it goes (``path``, relative to the models folder), where it comes
    from (``hub_filename`` in :data:`HUB_REPO`, or ``None`` for a manual step described by ``manual``), and whether
    rendering needs it (``required``)."""

    path: str
    what: str
    hub_filename: str | None = None
    manual: str = ""
    required: bool = True


WEIGHT_FILES = (
    WeightFile("arc2face/config.json", "Arc2Face UNet config", "arc2face/config.json"),
    WeightFile("arc2face/diffusion_pytorch_model.safetensors", "Arc2Face UNet", "arc2face/diffusion_pytorch_model.safetensors"),
    WeightFile("encoder/config.json", "identity encoder config", "encoder/config.json"),
    WeightFile("encoder/pytorch_model.bin", "identity encoder", "encoder/pytorch_model.bin"),
    WeightFile("exp_adapter/exp_adapter.bin", "expression adapter", "exp_adapter/exp_adapter.bin"),
    WeightFile("ref_adapter/pytorch_lora_weights.safetensors", "reference adapter", "ref_adapter/pytorch_lora_weights.safetensors"),
    WeightFile("antelopev2/arcface.onnx", "ArcFace recognition model", "arcface.onnx"),
    WeightFile(
        "antelopev2/scrfd_10g_bnkps.onnx", "SCRFD face detector", None,
        "download the insightface 'antelopev2' package (https://github.com/deepinsight/insightface/tree/master/"
        "python-package#model-zoo) and copy scrfd_10g_bnkps.onnx into {models}/antelopev2/ (without it the "
        "bundled MTCNN detector is used)",
        required=False,
    ),
    WeightFile(
        "smirk/SMIRK_em1.pt", "SMIRK expression encoder", None,
        "download SMIRK_em1.pt from the SMIRK release (https://github.com/georgeretsi/smirk, Google Drive id "
        "1T65uEd9dVLHgVw5KiUYL66NUee-MCzoE, e.g. `gdown --id 1T65uEd9dVLHgVw5KiUYL66NUee-MCzoE -O {models}/smirk/`)",
    ),
    WeightFile(
        "smirk/face_landmarker.task", "MediaPipe face landmarker", None,
        "download https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/"
        "face_landmarker.task into {models}/smirk/",
        required=False,
    ),
)


def missing_files(models: Path, required_only: bool = True) -> list[WeightFile]:
    """The files of :data:`WEIGHT_FILES` absent (or empty) under ``models``."""
    out = []
    for item in WEIGHT_FILES:
        path = models / item.path
        if (item.required or not required_only) and not (path.is_file() and path.stat().st_size > 0):
            out.append(item)
    return out


def manual_steps(models: Path) -> list[str]:
    """One line per file that is not on the hub and not yet in ``models``."""
    return [f"{item.path}: {item.manual.format(models=models)}"
            for item in WEIGHT_FILES if item.hub_filename is None and not (models / item.path).is_file()]


def download_weights(models: Path, base_model: str | None = "", out=None) -> Path:
    """Download every hub file of :data:`WEIGHT_FILES` into ``models`` (published layout) and, unless
    ``base_model`` is ``None``, the SD1.5 base files (``""`` = the default repository). huggingface_hub shows
    progress, resumes interrupted downloads and skips files already complete. Prints the manual steps for the
    other files. Raises :class:`WeightsError` (one line) when the hub cannot be reached."""
    from huggingface_hub import hf_hub_download

    out = out or sys.stdout
    models = Path(models)
    models.mkdir(parents=True, exist_ok=True)
    for item in WEIGHT_FILES:
        if item.hub_filename is None:
            continue
        target = models / item.path
        print(f"{item.path} ({item.what})", file=out)
        try:
            fetched = Path(hf_hub_download(HUB_REPO, item.hub_filename, local_dir=str(target.parent if item.hub_filename != item.path else models)))
        except Exception as error:
            raise WeightsError(f"cannot download {item.hub_filename} from {HUB_REPO} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''})") from error
        if fetched.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(fetched), target)
    if base_model is not None:
        from retarget.models.loading import resolve_base_model

        base = resolve_base_model(base_model or None)
        print(f"base model files: {base}", file=out)
    steps = manual_steps(models)
    if steps:
        print("files that are not on the hub (download them by hand):", file=out)
        for line in steps:
            print(f"  {line}", file=out)
    return models


@dataclass
class Check:
    """One doctor line: ``ok`` True/False, or None for a warning that does not fail the check."""

    name: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[self.ok]
        return f"[{mark}] {self.name}: {self.detail}"


def environment_checks() -> list[Check]:
    """Python, the packages the jobs import, and the accelerators torch and onnxruntime see."""
    checks = [Check("python", sys.version_info >= (3, 10), sys.version.split()[0])]
    for module, dist in (("torch", "torch"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                         ("peft", "peft"), ("onnxruntime", "onnxruntime"), ("av", "av"), ("cv2", "opencv-python"),
                         ("timm", "timm"), ("huggingface_hub", "huggingface_hub"), ("accelerate", "accelerate")):
        try:
            importlib.import_module(module)
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "installed"
            checks.append(Check(module, True, version))
        except Exception as error:  # a broken install shows as one failed line, whatever it raises
            checks.append(Check(module, False, f"cannot import ({type(error).__name__}: {error})"))
    try:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            checks.append(Check("cuda", True, f"{torch.cuda.device_count()} GPU(s): {names}"))
        else:
            checks.append(Check("cuda", None, "no GPU visible to torch; rendering runs on the CPU (slow)"))
    except Exception as error:
        checks.append(Check("cuda", None, f"not checked ({type(error).__name__})"))
    try:
        import av

        encoders = [name for name in ("libx264", "aac") if name in av.codecs_available]
        checks.append(Check("video encoders", "libx264" in encoders, ", ".join(encoders) or "none of libx264/aac"))
    except Exception as error:
        checks.append(Check("video encoders", False, f"{type(error).__name__}"))
    return checks


def weight_checks(models: Path, base_model: str | None, load: bool = False) -> list[Check]:
    """Presence of every published file under ``models``, the base model, and (``load``) a strict model load."""
    checks = []
    if not models.is_dir():
        return [Check("models folder", False, f"{models} does not exist (run `retarget weights download --models {models}`)")]
    for item in WEIGHT_FILES:
        path = models / item.path
        if path.is_file() and path.stat().st_size > 0:
            checks.append(Check(item.path, True, f"{path.stat().st_size / 1e6:.1f} MB"))
        else:
            how = "run `retarget weights download`" if item.hub_filename else item.manual.format(models=models)
            checks.append(Check(item.path, False if item.required else None, f"missing; {how}"))
    base = base_model or os.environ.get("RETARGET_BASE_MODEL")
    if base and Path(base).expanduser().is_dir():
        from retarget.models.loading import BASE_SUBFOLDERS

        lacking = [s for s in BASE_SUBFOLDERS if not (Path(base).expanduser() / s).is_dir()]
        checks.append(Check("base model", not lacking, f"{base}" + (f" lacks {', '.join(lacking)}" if lacking else "")))
    else:
        checks.append(Check("base model", None, f"{base or 'stable-diffusion-v1-5/stable-diffusion-v1-5'} "
                                                "(hub id; fetched on first use)"))
    if load:
        try:
            from retarget.pipeline import ExpressionPipeline

            pipe = ExpressionPipeline.from_pretrained(models, base_model=base_model, device="cpu")
            checks.append(Check("model load", True, f"{pipe.image_size}x{pipe.image_size} output"))
        except Exception as error:
            checks.append(Check("model load", False, str(error).splitlines()[0] if str(error) else type(error).__name__))
    return checks


def doctor(models: Path, base_model: str | None = None, load: bool = False, out=None) -> int:
    """Print one line per check (to ``out``, default stdout); returns 0 when nothing failed, else 1."""
    out = out or sys.stdout
    checks = environment_checks() + weight_checks(Path(models), base_model, load)
    for check in checks:
        print(check.line(), file=out)
    failed = sum(check.ok is False for check in checks)
    print(f"{failed} problem(s) found" if failed else "everything needed is in place", file=out)
    return 1 if failed else 0
