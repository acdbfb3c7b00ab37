"""One rendering session: the diffusion pipeline and the face models, loaded once and shared by every clip
(``batch`` renders many clips with one session), plus batched rendering with the clip's noise."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retarget.devices import resolve_device, use_device
from retarget.errors import RetargetError, WeightsError
from retarget.faces.models import FaceModels
from retarget.jobs.frames import FaceReference, face_reference
from retarget.jobs.options import JobOptions
from retarget.jobs.stage_times import StageTimes, dynamo_compiles

log = logging.getLogger(__name__)


class LoadStopped(Exception):
    """A pipeline load on a background thread stopped because the program exits (see :data:`EXITING`)."""


#: Set when the interpreter starts to exit, before it waits for the threads that are not daemons (``threading``'s
#: own exit hook, the one ``concurrent.futures`` uses): a pipeline load still running on its thread then stops at
#: its next step (see :meth:`RenderSession.start_loading`) and the program ends cleanly. (A daemon thread cut off
#: inside torch at exit can abort the process, e.g. after a job failed on a photo without a face during the load.)
EXITING = threading.Event()
_register_exit_hook = getattr(threading, "_register_atexit", None)
if _register_exit_hook is not None:
    _register_exit_hook(EXITING.set)


def _stop_when_exiting() -> None:
    if EXITING.is_set():
        raise LoadStopped("the program is exiting")


#: The fewest frames a job renders for ``compile=None`` (automatic) to compile the UNet on CUDA: a minute of 30 fps
#: video. Measured on an H200 (bf16, batch 16, published sizes): a batch took 2.85 s eager and 2.14 s compiled
#: (0.044 s less per frame), the compile cost 47 s on the machine's first run and about 11 s of a later run's load
#: (the persistent cache), so compiling pays from about 250 frames with the cache and about 1,100 without; at 1,800
#: it still pays where the first compile takes twice as long.
AUTO_COMPILE_FRAMES = 1800
#: The same when this machine's compile cache holds the job's graph (see
#: :meth:`~retarget.pipeline.ExpressionPipeline.compiled_before`): the compile is then a load of about 11 s, which
#: the 0.044 s saved per frame repay from about 250 frames.
AUTO_COMPILE_FRAMES_CACHED = 300


def compile_chosen(option: bool | None, device, frames: int | None, cached: bool = False) -> bool:
    """Whether a job compiles the UNet: ``option`` True or False says so (``--compile``, ``--no-compile``);
    None (the default) compiles on a CUDA device when the job renders at least :data:`AUTO_COMPILE_FRAMES`
    frames, or :data:`AUTO_COMPILE_FRAMES_CACHED` when the compile cache holds its graph (``cached``), and
    ``torch.compile`` can build its kernels here (Triton and a C compiler, see
    :func:`~retarget.jobs.weights.compile_check`). ``frames``: the job's estimate, None when unknown."""
    if option is not None:
        return bool(option)
    least = AUTO_COMPILE_FRAMES_CACHED if cached else AUTO_COMPILE_FRAMES
    if str(device).split(":")[0] != "cuda" or frames is None or frames < least:
        return False
    from retarget.jobs.weights import compile_check

    return compile_check(gpu=True).ok is True


def overlaps_scan(device) -> bool:
    """Whether a job gives the model work to do while a face scan runs: the warm-up after a background load (see
    :meth:`RenderSession.load`) and, in ``batch``, the render of one clip while the next is scanned (see
    :mod:`retarget.jobs.batch`). On CUDA, where the scan's CPU work and the device's work overlap. Not on the CPU,
    where both need the same cores: there a ``run --compile`` with the warm-up measured 0.94x of one without
    (2 cores)."""
    return str(device).split(":")[0] == "cuda"


class RenderSession:
    """Holds what a job loads once: ``pipeline`` (:class:`~retarget.pipeline.ExpressionPipeline`) and ``faces``
    (:class:`~retarget.jobs.frames.FaceModels`), all on ``device`` (``options.device`` resolved by
    :func:`~retarget.devices.resolve_device`: under ``accelerate launch`` / ``torchrun`` each process gets its own
    GPU). Jobs call :meth:`load` first, so missing or broken weights fail before any face scan or clip; the
    properties also load on first use.

    With ``load(background=True)`` the diffusion pipeline loads on its own thread while the job scans the clip
    (the face models, which the scan needs, load first, on the calling thread). The weight files' headers are
    read before the thread starts (a file that is not a weights file fails at once); any other load error is
    kept and raised by :meth:`check_loading`, which the scan calls between its chunks, so broken weights stop
    the job within one chunk of the scan, and by :attr:`pipeline`. Given the job's first batch (``warm_up``), that
    thread then also pays the first batch's one-time costs (see :meth:`~retarget.pipeline.ExpressionPipeline.warm_up`:
    CUDA set-up, the compile with ``--compile``) while the scan runs. ``load_seconds``: the time spent loading
    models (face models and pipeline, warm-up included), for :mod:`retarget.jobs.stage_times`, and ``load_parts``
    what it was spent on."""

    def __init__(self, options: JobOptions):
        self.options = options
        self.device = resolve_device(options.device)
        use_device(self.device)
        self.faces = FaceModels(options.models, device=self.device, batch_size=max(8, options.batch_size),
                                channel_order=options.smirk_channels)
        self._pipeline = None
        self._face_reference = None
        self._loader: threading.Thread | None = None
        self._load_error: BaseException | None = None
        self._failed_load: BaseException | None = None  # kept when a later load starts (see failed_load)
        self.load_seconds = 0.0
        self.load_parts: dict[str, float] = {}  # seconds of each part of load_seconds (face models, then the pipeline's)
        self.frames: int | None = None  # the frames the loading job renders (an estimate): see compile_chosen
        self.first_batch: tuple[int, str | None] | None = None  # the loading job's first batch (see load)

    def load(self, expressions: bool = True, background: bool = False,
             warm_up: tuple[int, str | None] | None = None, frames: int | None = None) -> "RenderSession":
        """Load and check every model file the job needs now: the face detector, ArcFace, SMIRK (unless
        ``expressions`` is False: a job that reads no expressions) and the diffusion pipeline (on a background
        thread with ``background``, see the class doc). Returns ``self``.

        ``warm_up``: ``(frames, reference)`` of the job's first diffusion batch (``reference`` as in
        :meth:`~retarget.pipeline.ExpressionPipeline.warm_up`). With ``background``, where :func:`overlaps_scan` (on
        CUDA), the loading thread renders a one-step stand-in batch of that shape after the load (and after the
        compile set-up with ``options.compile``). A wrong guess costs time only: results never depend on it.
        ``frames``: how many frames the job renders (an estimate), which decides whether ``options.compile`` None
        compiles (see :func:`compile_chosen`, where ``warm_up`` tells whether the compile cache holds the job's
        graph; the pipeline is built once, so the job that loads it decides).

        Raises :class:`~retarget.errors.WeightsError` (one line) for a missing models folder or a missing or
        broken file, among them the Reference Adapter when ``warm_up`` names a reference kind (the job renders with
        one), so that the job stops before its face scan rather than at its first batch.
        """
        if not self.options.models.is_dir():
            raise WeightsError(f"models folder not found: {self.options.models}")
        if self._pipeline is None and self._loader is None:
            if frames is not None:
                self.frames = frames
            if warm_up is not None:
                self.first_batch = warm_up
        if warm_up is not None and warm_up[1] is not None:
            require_reference_adapter(self.options.models)
        begin = time.perf_counter()
        for name in ("detector", "identity") + (("expressions",) if expressions else ()):
            getattr(self.faces, name)  # each property loads and checks its file
        seconds = time.perf_counter() - begin
        self.load_seconds += seconds
        self.load_parts["face_models"] = round(self.load_parts.get("face_models", 0.0) + seconds, 4)
        if background:
            self.start_loading(warm_up)
        else:
            _ = self.pipeline
        return self

    def start_loading(self, warm_up: tuple[int, str | None] | None = None) -> None:
        """Start loading the pipeline on a background thread (no-op when it is loaded or loading), then warming
        it up for ``warm_up`` (see :meth:`load`). Reads the weight files' headers first (see
        :func:`~retarget.models.formats.check_headers`), raising at once for a file that is not a weights file."""
        if self._pipeline is not None or self._loader is not None:
            return
        from retarget.models.formats import check_headers

        check_headers(self.options.models)
        self._load_error = None

        def target():
            use_device(self.device)  # the current CUDA device is per thread
            try:
                self._build_pipeline(warm_up, check=_stop_when_exiting)
            except BaseException as error:  # kept for check_loading / pipeline on the job's thread
                self._load_error = self._failed_load = error

        # Not a daemon, so the interpreter's exit waits for it, after EXITING has asked it to stop at its next step
        # (a daemon only where this Python has no such exit hook).
        self._loader = threading.Thread(target=target, name="retarget-load", daemon=_register_exit_hook is None)
        self._loader.start()

    def check_loading(self) -> None:
        """Raise the background load's error if it failed; returns at once otherwise (loaded or still loading)."""
        if self._load_error is not None:
            raise self._load_error

    @property
    def failed_load(self) -> BaseException | None:
        """The error of this session's last background load that failed, or None if none did. Unlike the error
        :meth:`check_loading` raises, it stays when a job starts the load again (a job on another thread may do so
        at any moment): ``batch`` stops on it instead of failing every clip the same way."""
        return self._failed_load

    @property
    def pipeline(self):
        """The pipeline, loaded on first use (waits for a background load); ``options.vae_fp32`` upcasts its VAE
        and ``options.compile`` compiles its UNet (None: see :func:`compile_chosen`)."""
        if self._loader is not None:
            self._loader.join()
            self._loader = None
        self.check_loading()
        if self._pipeline is None:
            self._build_pipeline()
        return self._pipeline

    def _build_pipeline(self, warm_up: tuple[int, str | None] | None = None, check=None) -> None:
        """Load the pipeline (see :attr:`pipeline`), then warm it up for ``warm_up``; ``check`` is called between
        the steps and may raise to stop (a background load at exit)."""
        from retarget.pipeline import ExpressionPipeline, compile_log

        begin = time.perf_counter()
        o = self.options
        check = check or (lambda: None)
        pipe = ExpressionPipeline.from_pretrained(o.models, base_model=o.base_model, device=self.device,
                                                  dtype=o.dtype, check=check)
        loaded = time.perf_counter()
        if o.lcm_lora is not None:
            pipe.load_lcm_lora(o.lcm_lora)
        if o.vae_fp32:
            pipe.upcast_vae()
        mode = None if o.compile_mode == "default" else o.compile_mode
        cached = o.compile is None and self.first_batch is not None and pipe.compiled_before(
            self.first_batch[0], o.guidance, self.first_batch[1] is not None, mode=mode)
        if compile_chosen(o.compile, self.device, self.frames, cached=cached):
            if o.compile is None:
                compile_log.info("compiling the UNet: %d frames to render%s (--no-compile renders without)",
                                 self.frames, ", its graph in this machine's compile cache" if cached else "")
            pipe.compile(mode=mode)
        options_done = time.perf_counter()
        check()
        # Not with CUDA graphs: torch records them per thread, so graphs recorded here would be recorded again by
        # the rendering thread, in a second memory pool (and older torch releases fail there: pytorch issue 123177).
        if warm_up is not None and overlaps_scan(pipe.device) and not pipe.uses_cuda_graphs:
            frames, reference = warm_up
            failure = None
            try:
                pipe.warm_up(frames, o.guidance, reference, o.reference_scale)
            except Exception as error:  # an optimisation must not fail a job: the first batch pays the costs instead
                failure = type(error).__name__ + (f": {_first_line(error)}" if str(error).strip() else "")
                log.debug("warm-up failure", exc_info=True)
            if failure is not None:  # outside the handler: the failed call's tensors are let go first
                log.warning("warm-up skipped (%s); the first batch starts cold", failure)
                import torch

                torch.cuda.empty_cache()  # e.g. out of memory beside the scan: leave the room to the render
        self._pipeline = pipe
        end = time.perf_counter()
        self.load_seconds += end - begin
        self.load_parts.update(pipe.load_seconds)
        self.load_parts["options"] = round(options_done - loaded, 4)  # LCM-LoRA, VAE upcast, compile set-up
        self.load_parts["warm_up"] = round(end - options_done, 4)

    @property
    def face_reference(self) -> FaceReference | None:
        """The ``--face-reference`` photo's person (read on first use), or None without that option."""
        if self._face_reference is None and self.options.face_reference is not None:
            self._face_reference = face_reference(self.options.face_reference, self.faces)
        return self._face_reference

    def render(self, id_embeds: np.ndarray, expressions: np.ndarray, frame_indices: np.ndarray,
               reference: np.ndarray | Sequence[np.ndarray] | None, desc: str = "render",
               times: StageTimes | None = None) -> np.ndarray:
        """Faces for ``len(frame_indices)`` frames: uint8 ``[n, S, S, 3]`` (S = the model's output side).

        ``id_embeds``: ArcFace ``[512]``. ``expressions``: ``[n, 55]``. ``frame_indices``: the frames' numbers in
        the clip (they pick each frame's noise, so a resumed or re-batched render draws the same noise).
        ``reference``: one aligned face ``[S, S, 3]`` shared by every frame (passed unchanged each batch so the
        pipeline's reference cache hits), a sequence of ``n`` (one per frame), or None (adapter off).
        Frames go to the model ``options.batch_size`` at a time; ``times`` records each batch (see
        :meth:`~retarget.jobs.stage_times.StageTimes.batch_done`).
        """
        from tqdm.auto import tqdm

        import torch

        from retarget.pipeline import clip_noise

        o, pipe = self.options, self.pipeline
        n, size = len(frame_indices), pipe.image_size
        shared = reference is None or (isinstance(reference, np.ndarray) and reference.ndim == 3)
        out = np.empty((n, size, size, 3), np.uint8)
        starts = range(0, n, o.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not o.progress or len(starts) < 2, leave=False):
            rows = slice(start, min(start + o.batch_size, n))
            latents = clip_noise(o.seed, frame_indices[rows], pipe.latent_shape, per_frame=o.per_frame_noise)
            shortage = None
            begin, compiles = time.perf_counter(), dynamo_compiles()
            try:
                images = pipe(
                    id_embeds, expressions[rows],
                    reference_image=reference if shared else list(reference[rows]),
                    reference_scale=o.reference_scale, expression_scale=o.expression_scale,
                    num_inference_steps=o.steps, guidance_scale=o.guidance, latents=latents, output_type="uint8",
                    progress=o.progress,  # a bar over the steps of a slow batch (a CPU), see STEP_BAR_DELAY_S
                ).images
            except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as error:  # torch < 2.5: CUDA's
                shortage = _first_line(error)
            if shortage is not None:  # raised outside the handler: the failed batch's tensors are let go first
                raise DeviceMemoryError(out_of_memory_message(self.device, o.batch_size, shortage))
            out[rows] = images
            if times is not None:
                times.batch_done(time.perf_counter() - begin, dynamo_compiles() - compiles)
        return out


def require_reference_adapter(models: Path) -> None:
    """Raise :class:`~retarget.errors.WeightsError` (one line) when ``models`` lacks the Reference Adapter file."""
    from retarget.models.formats import REFERENCE_LORA_FILE

    path = models / REFERENCE_LORA_FILE
    if not path.is_file():
        raise WeightsError(f"Reference Adapter not found: {path} (retarget weights download fetches it; `run` "
                           "and `batch --identity` render without it with --no-reference)")


class DeviceMemoryError(RetargetError):
    """The device ran out of memory during a diffusion batch (the message says what to change)."""


def out_of_memory_message(device: str, batch_size: int, detail: str) -> str:
    """One line for a diffusion batch that ran out of device memory: what happened and what to try.

    The finished chunks of a render are kept (see :mod:`retarget.video.resume`), so the same command with a
    smaller ``--batch-size`` resumes where it stopped (the batch size is not part of the render key).
    """
    advice = f"try --batch-size {max(1, batch_size // 2)}" if batch_size > 1 else "free memory on the device"
    return (f"{device} ran out of memory rendering a batch of {batch_size} frame(s) ({detail}); {advice}: "
            f"chunks already finished are kept and the same command resumes from them")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
