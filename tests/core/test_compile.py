"""torch.compile of the denoising UNet: one graph, no graph breaks, no recompiles across batches and clips.

A counting backend (dynamo's ``CompileCounter``) runs the captured graphs eagerly, so this is cheap on the CPU
and the compiled output can be compared exactly with the eager one.
"""

import os

import numpy as np
import pytest
import torch

from retarget.pipeline import use_persistent_inductor_cache

BATCH = 3


def _clip(seed: int, frames: int):
    g = torch.Generator().manual_seed(seed)
    return dict(
        ids=torch.randn(512, generator=g),
        expressions=torch.randn(frames, 55, generator=g),
        latents=torch.randn(1, 4, 16, 16, generator=g).expand(frames, -1, -1, -1).clone(),
        reference=(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy(),
    )


def _render(pipe, clip, reference_scale, expression_scale, after_batch=None):
    """Render a clip ``BATCH`` frames at a time, as a render session does."""
    out = []
    frames = len(clip["expressions"])
    for start in range(0, frames, BATCH):
        rows = slice(start, min(start + BATCH, frames))
        out.append(pipe(clip["ids"], clip["expressions"][rows], reference_image=clip["reference"],
                        reference_scale=reference_scale, expression_scale=expression_scale,
                        latents=clip["latents"][rows], num_inference_steps=2).images)
        if after_batch is not None:
            after_batch()
    return np.concatenate(out)


def test_compiled_unet_traces_once_for_every_batch_and_clip(tiny_checkpoint, caplog):
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    from retarget import ExpressionPipeline

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounter()
    compiled = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    compiled.compile(backend=counter)
    first, second = _clip(1, 7), _clip(2, 5)  # 3 + 3 + 1 and 3 + 2 frames: the last batches are padded

    graphs = []
    with caplog.at_level("INFO", logger="retarget.pipeline.compile"):
        a = _render(compiled, first, 0.8, 1.0, after_batch=lambda: graphs.append(counter.frame_count))
        b = _render(compiled, second, 0.5, 0.6)  # another identity, reference, reference and expression scale
    assert graphs == [1, 1, 1] and counter.frame_count == 1  # traced at the first batch, never again
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiling the UNet")]
    assert len(notices) == 1 and notices[0].startswith(f"compiling the UNet for batches of {BATCH} ")  # told once
    assert sum(counters["graph_break"].values()) == 0
    assert counter.op_count > 100  # the whole UNet is one graph
    assert compiled.static_batch_size == BATCH

    eager = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    eager.static_batch_size = BATCH  # the same padded shapes, without compiling
    assert compiled.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # compile() sets it
    assert not compiled.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # eager VAE
    torch.nn.Module.to(eager.unet, memory_format=torch.channels_last)  # the same weights' layout, eager
    assert np.array_equal(a, _render(eager, first, 0.8, 1.0))
    assert np.array_equal(b, _render(eager, second, 0.5, 0.6))
    assert a.shape == (7, 32, 32, 3) and b.shape == (5, 32, 32, 3)
    torch._dynamo.reset()


def test_padding_keeps_the_real_rows(pipe):
    clip = _clip(3, 2)
    kw = dict(reference_image=clip["reference"], latents=clip["latents"], num_inference_steps=2)
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        plain = pipe(clip["ids"], clip["expressions"], **kw).images
        pipe.static_batch_size = 4
        padded = pipe(clip["ids"], clip["expressions"], **kw).images
        per_frame_refs = pipe(clip["ids"], clip["expressions"],
                              **{**kw, "reference_image": np.stack([clip["reference"]] * 2)}).images
    finally:
        pipe.static_batch_size = 0
        handle.remove()
    assert padded.shape == plain.shape == (2, 32, 32, 3)
    # reference pass (1 row), 2 frames x CFG; then padded to 4 frames x CFG (reference cached); then 4 per-frame
    # references (the 2 given, padded) and 4 frames x CFG
    assert rows == [1, 4, 4, 8, 8, 4, 8, 8]
    assert np.abs(padded - plain).max() < 1e-5
    assert np.abs(per_frame_refs - plain).max() < 1e-5


def test_inductor_cache_defaults_to_a_persistent_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_persistent_inductor_cache() == tmp_path / "xdg" / "retarget" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "retarget" / "inductor")
    assert (tmp_path / "xdg" / "retarget" / "inductor").is_dir()
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._inductor writes
    assert use_persistent_inductor_cache() == tmp_path / "xdg" / "retarget" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice is kept
    assert use_persistent_inductor_cache() == tmp_path / "mine"
    assert use_persistent_inductor_cache(tmp_path / "given") == tmp_path / "given"  # an explicit folder wins
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "given")


def test_compiled_without_guidance_traces_once(tiny_checkpoint):
    from torch._dynamo.testing import CompileCounter

    from retarget import ExpressionPipeline

    torch._dynamo.reset()
    counter = CompileCounter()
    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    pipe.compile(backend=counter)
    for seed in (4, 5):
        clip = _clip(seed, 2)
        pipe(clip["ids"], clip["expressions"], reference_image=clip["reference"], latents=clip["latents"],
             num_inference_steps=2, guidance_scale=1.0)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_warm_up_compiles_the_first_batch_ahead_and_changes_nothing(tiny_checkpoint):
    from torch._dynamo.testing import CompileCounter

    from retarget import ExpressionPipeline

    torch._dynamo.reset()
    counter = CompileCounter()
    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    pipe.compile(backend=counter)
    pipe.warm_up(BATCH, guidance_scale=3.0, reference="shared", decode=False)
    assert counter.frame_count == 1 and pipe.static_batch_size == 0  # compiled; the padded size is restored
    assert pipe._identity_cache is None and pipe._reference_cache is None  # the stand-in's caches are gone
    clip = _clip(1, 7)
    shared = _render(pipe, clip, 0.8, 1.0)
    assert counter.frame_count == 1  # the clip's batches reuse the warm-up's graph

    torch._dynamo.reset()
    counter = CompileCounter()
    per_frame = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    per_frame.compile(backend=counter)
    per_frame.warm_up(BATCH, reference="per_frame", decode=True)  # one reference per frame, as edit renders
    references = np.stack([clip["reference"], clip["reference"][::-1], clip["reference"][:, ::-1]])
    by_frame = per_frame(clip["ids"], clip["expressions"][:BATCH], reference_image=references,
                         latents=clip["latents"][:BATCH], num_inference_steps=2).images
    assert counter.frame_count == 1
    torch._dynamo.reset()

    eager = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    eager.static_batch_size = BATCH
    torch.nn.Module.to(eager.unet, memory_format=torch.channels_last)  # the compiled UNet's layout
    assert np.array_equal(shared, _render(eager, clip, 0.8, 1.0))
    assert np.array_equal(by_frame, eager(clip["ids"], clip["expressions"][:BATCH], reference_image=references,
                                          latents=clip["latents"][:BATCH], num_inference_steps=2).images)


def test_an_eager_warm_up_leaves_the_renders_unchanged(pipe):
    clip = _clip(6, 5)
    before = _render(pipe, clip, 0.8, 1.0)
    pipe.warm_up(2, reference=None)
    pipe.warm_up(BATCH, guidance_scale=1.0, reference="per_frame", reference_scale=0.3)
    assert np.array_equal(before, _render(pipe, clip, 0.8, 1.0))
    with pytest.raises(ValueError, match="reference must be"):
        pipe.warm_up(2, reference="one")


def test_a_compile_that_fails_renders_eagerly_and_says_why_once(tiny_checkpoint, caplog):
    """A backend that fails (here one that raises as inductor does without a C++ compiler) costs one warning: the
    step it failed at and every later one run eagerly, in the eager layout, and the frames equal an eager render
    (up to float rounding)."""
    from retarget import ExpressionPipeline

    torch._dynamo.reset()
    attempts = []

    def failing_backend(graph_module, example_inputs):
        attempts.append(len(example_inputs))
        raise RuntimeError("No working C++ compiler found (a stand-in)")

    compiled = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    compiled.compile(backend=failing_backend)
    clip = _clip(6, 7)
    with caplog.at_level("INFO", logger="retarget.pipeline.compile"):
        frames = _render(compiled, clip, 0.8, 1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["torch.compile failed (RuntimeError: No working C++ compiler found (a stand-in)); "
                        "rendering without it"]
    assert len(attempts) == 1 and compiled.compile_failure == "RuntimeError: No working C++ compiler found (a stand-in)"
    assert compiled.static_batch_size == 0 and compiled.unet.conv_in.weight.is_contiguous()

    eager = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    # up to float rounding: the first batch's reference features were computed in compile()'s channels-last layout
    assert np.abs(frames - _render(eager, clip, 0.8, 1.0)).max() < 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("part", ["unet", "decoder"])
def test_a_failure_of_dynamo_itself_also_renders_eagerly(tiny_checkpoint, caplog, part):
    """Not only the backend: an error of dynamo's own tracing (here raised by a stand-in for the compiled UNet, or
    for the compiled VAE decode of ``compile(decoder=True)``) is one warning, then eager rendering, UNet and decode,
    whose frames equal an eager pipeline's; a default compile of a long job must not fail a render that runs
    eagerly."""
    from retarget import ExpressionPipeline

    compiled = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    compiled.compile(decoder=part == "decoder")
    calls = []

    def failing(inputs, *args, **kwargs):
        calls.append(inputs.shape[0])
        raise torch._dynamo.exc.InternalTorchDynamoError("a dynamo bug (a stand-in)")

    if part == "unet":
        compiled._denoiser = failing
    else:
        compiled._denoiser, compiled._compiled_decode = None, failing  # only the decode compiled here
    clip = _clip(6, 7)
    with caplog.at_level("INFO", logger="retarget.pipeline.compile"):
        frames = _render(compiled, clip, 0.8, 1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["torch.compile failed (a dynamo bug (a stand-in)); rendering without it"]
    # tried once: the UNet with the CFG batch's rows, the decode with a VAE batch (padded to vae_batch_size)
    assert calls == [2 * BATCH if part == "unet" else compiled.vae_batch_size]
    assert compiled._denoiser is None and compiled._compiled_decode is None
    eager = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    assert np.abs(frames - _render(eager, clip, 0.8, 1.0)).max() < 1e-5


def test_a_compiled_decoder_traces_once_and_equals_the_eager_decode(tiny_checkpoint):
    """``compile(decoder=True)``: the VAE decode is one more graph, traced at the first batch and reused for every
    VAE batch (each padded to ``vae_batch_size`` rows, the padding dropped) of every clip; the images equal an
    eager decode of the same latents up to float rounding (the padded batch is another convolution batch size)."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    from retarget import ExpressionPipeline

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounter()
    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    pipe.vae_batch_size = 2  # batches of 3 frames decode as 2 + 1 (padded to 2)
    pipe.compile(backend=counter, decoder=True)
    graphs = []
    frames = _render(pipe, _clip(1, 7), 0.8, 1.0, after_batch=lambda: graphs.append(counter.frame_count))
    _render(pipe, _clip(2, 2), 0.5, 0.6)
    assert graphs == [2, 2, 2] and counter.frame_count == 2  # the UNet and the decode, each traced once
    assert sum(counters["graph_break"].values()) == 0
    assert frames.shape == (7, 32, 32, 3)

    latents = torch.randn(5, *pipe.latent_shape, generator=torch.Generator().manual_seed(3))
    compiled = pipe.decode(latents)
    assert counter.frame_count == 2 and compiled.shape == (5, 3, 32, 32) and compiled.dtype == torch.float32
    reference = torch.cat([((pipe.vae.decode(chunk / pipe.vae.config.scaling_factor).sample / 2) + 0.5).clamp(0, 1)
                           for chunk in latents.split(2)])
    assert torch.allclose(compiled, reference, atol=1e-5, rtol=0)
    assert 0 <= compiled.min() and compiled.max() <= 1
    torch._dynamo.reset()


def test_the_decoder_compiles_without_cuda_graphs():
    """The decode's images are kept while the next VAE batch runs, so CUDA graphs (which reuse output buffers)
    are taken out of the UNet's mode or options for it, and nothing else changes."""
    from retarget.pipeline import _without_cuda_graphs

    assert _without_cuda_graphs(None, {}) == {"mode": None}
    assert _without_cuda_graphs("default", {}) == {"mode": "default"}
    assert _without_cuda_graphs("reduce-overhead", {}) == {"mode": None}
    assert _without_cuda_graphs("max-autotune", {}) == {"mode": "max-autotune-no-cudagraphs"}
    assert _without_cuda_graphs("max-autotune-no-cudagraphs", {}) == {"mode": "max-autotune-no-cudagraphs"}
    options = {"epilogue_fusion": False, "triton.cudagraphs": True}
    assert _without_cuda_graphs(None, {"options": options}) == {
        "options": {"epilogue_fusion": False, "triton.cudagraphs": False}}
    assert options["triton.cudagraphs"] is True  # the caller's dict is left alone


def test_finished_compiled_loops_are_recorded_in_the_compile_cache(tiny_checkpoint, tmp_path, monkeypatch):
    """A compiled denoising loop that finishes leaves a record of its graph (rows, guidance, reference, compile
    settings, releases, device, model) in the persistent cache's folder; ``compiled_before`` finds it from any
    pipeline of the same model, and nothing else. A compile that failed records nothing. (A counting backend
    stands in for inductor, whose artefacts persist.)"""
    import json

    from torch._dynamo.testing import CompileCounter

    from retarget import ExpressionPipeline
    from retarget import pipeline as pipeline_module
    from retarget.models.compile_records import RECORDS_FOLDER

    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(pipeline_module, "PERSISTENT_BACKENDS", ("inductor", counter))
    cache = tmp_path / "cache"
    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    assert not pipe.compiled_before(BATCH, 3.0, True, cache_dir=cache)
    pipe.compile(backend=counter, cache_dir=cache)
    _render(pipe, _clip(1, 7), 0.8, 1.0)  # batches of 3, 3 and 1 (padded to 3): one graph
    records = sorted((cache / RECORDS_FOLDER).glob("*.json"))
    assert len(records) == 1
    content = json.loads(records[0].read_text())
    assert (content["rows"], content["guidance"], content["reference"]) == (BATCH, True, True)
    assert content["torch"] == torch.__version__ and content["device"] == "cpu" and content["dtype"] == "torch.float32"
    assert content["compile"] == {"mode": None, "fullgraph": False, "decoder": False}

    other = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    assert other.compiled_before(BATCH, 3.0, True, cache_dir=cache)  # as a later job would ask
    assert other.compiled_before(BATCH, 2.0, True, cache_dir=cache)  # any guidance above 1 is the same graph
    assert not other.compiled_before(BATCH, 1.0, True, cache_dir=cache)  # no unconditional rows: another graph
    assert not other.compiled_before(BATCH, 3.0, False, cache_dir=cache)
    assert not other.compiled_before(BATCH + 1, 3.0, True, cache_dir=cache)
    assert not other.compiled_before(BATCH, 3.0, True, mode="max-autotune", cache_dir=cache)
    assert not other.compiled_before(BATCH, 3.0, True, decoder=True, cache_dir=cache)
    assert not other.compiled_before(BATCH, 3.0, True, cache_dir=tmp_path / "elsewhere")
    other.optimize(fuse_qkv=False)
    assert not other.compiled_before(BATCH, 3.0, True, cache_dir=cache)  # separate projections: another graph

    clip = _clip(2, 2)
    pipe(clip["ids"], clip["expressions"], latents=clip["latents"], num_inference_steps=2, guidance_scale=1.0)
    assert len(list((cache / RECORDS_FOLDER).glob("*.json"))) == 2  # padded to 3 rows, no guidance, no reference
    assert pipe.compiled_before(BATCH, 1.0, False, cache_dir=cache)
    pipe.compile(backend=counter, cache_dir=cache, fullgraph=True)  # other settings, the same shapes: recorded too
    pipe(clip["ids"], clip["expressions"], latents=clip["latents"], num_inference_steps=2, guidance_scale=1.0)
    assert pipe.compiled_before(BATCH, 1.0, False, fullgraph=True, cache_dir=cache)

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("No working C++ compiler found (a stand-in)")

    torch._dynamo.reset()
    monkeypatch.setattr(pipeline_module, "PERSISTENT_BACKENDS", ("inductor", failing_backend))
    failed = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    failed.compile(backend=failing_backend, cache_dir=tmp_path / "failed")
    _render(failed, _clip(1, 4), 0.8, 1.0)
    assert failed.compile_failure is not None and not (tmp_path / "failed" / RECORDS_FOLDER).exists()
    torch._dynamo.reset()
