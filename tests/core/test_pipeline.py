"""ExpressionPipeline vs the published per-image recipe, and what each control does."""

import numpy as np
import pytest
import torch

from retarget.pipeline import clip_noise, to_uint8

STEPS = 6


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return dict(
        ids=torch.randn(3, 512, generator=g),
        expressions=torch.randn(3, 55, generator=g),
        latents=torch.randn(3, 4, 16, 16, generator=g),
        reference=(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy(),
    )


@pytest.mark.parametrize("use_reference", [False, True])
@pytest.mark.parametrize("per_frame_identity", [False, True])
def test_batch_equals_official_recipe_one_frame_at_a_time(pipe, official, inputs, use_reference, per_frame_identity):
    ids = inputs["ids"] if per_frame_identity else inputs["ids"][0]
    reference = inputs["reference"] if use_reference else None
    batch = pipe(ids, inputs["expressions"], reference_image=reference, latents=inputs["latents"],
                 num_inference_steps=STEPS).images
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.float32
    for i in range(3):
        one = official.render_one(inputs["ids"][i if per_frame_identity else 0], inputs["expressions"][i],
                                  reference_image=reference, latents=inputs["latents"][i:i + 1],
                                  num_inference_steps=STEPS)
        assert np.abs(batch[i] - one).max() < 1e-3
    # the frames really differ, so the comparison is not vacuous
    assert np.abs(batch[0] - batch[1]).max() > 1e-2


def test_batch_equals_each_frame_alone(pipe, inputs):
    ref = inputs["reference"]
    batch = pipe(inputs["ids"], inputs["expressions"], reference_image=ref, latents=inputs["latents"],
                 num_inference_steps=STEPS).images
    for i in range(3):
        alone = pipe(inputs["ids"][i], inputs["expressions"][i:i + 1], reference_image=ref,
                     latents=inputs["latents"][i:i + 1], num_inference_steps=STEPS).images
        assert np.abs(batch[i] - alone[0]).max() < 1e-4


def test_expression_scale_zero_equals_the_adapter_off(pipe, tiny_checkpoint, inputs):
    """With scale 0 the output is plain Arc2Face: the stock pipeline with no IP-Adapter loaded."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from retarget.models.loading import load_unet

    stock = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        unet=load_unet(tiny_checkpoint.models_dir / "arc2face"),
        scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    stock.set_progress_bar_config(disable=True)
    ours = pipe(inputs["ids"][0], inputs["expressions"][:1], expression_scale=0.0, latents=inputs["latents"][:1],
                num_inference_steps=STEPS).images
    prompt = pipe.encode_identity(inputs["ids"][0])
    plain = stock(prompt_embeds=prompt, latents=inputs["latents"][:1], num_inference_steps=STEPS,
                  guidance_scale=3.0, output_type="np").images
    assert np.abs(ours - plain).max() < 1e-4
    scaled = pipe(inputs["ids"][0], inputs["expressions"][:1], expression_scale=1.0, latents=inputs["latents"][:1],
                  num_inference_steps=STEPS).images
    assert np.abs(scaled - plain).max() > 1e-2


def test_guidance_one_skips_the_unconditional_pass(pipe, official, inputs):
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        out = pipe(inputs["ids"][0], inputs["expressions"][:2], guidance_scale=1.0, latents=inputs["latents"][:2],
                   num_inference_steps=STEPS).images
        assert rows == [2] * STEPS
        rows.clear()
        pipe(inputs["ids"][0], inputs["expressions"][:2], guidance_scale=3.0, latents=inputs["latents"][:2],
             num_inference_steps=STEPS)
        assert rows == [4] * STEPS
    finally:
        handle.remove()
    one = official.render_one(inputs["ids"][0], inputs["expressions"][1], guidance_scale=1.0,
                              latents=inputs["latents"][1:2], num_inference_steps=STEPS)
    assert np.abs(out[1] - one).max() < 1e-3


def test_reference_scale_changes_only_the_lora(pipe, official, inputs):
    kw = dict(latents=inputs["latents"][:1], num_inference_steps=STEPS)
    ref = inputs["reference"]
    no_ref_a = pipe(inputs["ids"][0], inputs["expressions"][:1], reference_scale=0.2, **kw).images
    no_ref_b = pipe(inputs["ids"][0], inputs["expressions"][:1], reference_scale=1.0, **kw).images
    assert np.array_equal(no_ref_a, no_ref_b)  # without a reference the scale does nothing
    outs = {}
    for scale in (0.0, 0.5, 0.8):
        outs[scale] = pipe(inputs["ids"][0], inputs["expressions"][:1], reference_image=ref, reference_scale=scale, **kw).images
        one = official.render_one(inputs["ids"][0], inputs["expressions"][0], reference_image=ref,
                                  reference_scale=scale, latents=inputs["latents"][:1], num_inference_steps=STEPS)
        assert np.abs(outs[scale][0] - one).max() < 1e-3
    assert np.abs(outs[0.0] - outs[0.8]).max() > 1e-3
    # scale 0 keeps the reference attention (unlike no reference at all)
    assert np.abs(outs[0.0] - no_ref_a).max() > 1e-3


def test_reference_features_are_computed_once_per_reference(pipe, inputs):
    recordings = []
    original = pipe.unet.forward

    def counting(*args, **kwargs):
        if pipe.context.recording is not None:
            recordings.append(1)
        return original(*args, **kwargs)

    pipe.unet.forward = counting
    try:
        ref = np.roll(inputs["reference"], 5, axis=1)  # not seen by earlier tests
        for batch in range(3):
            pipe(inputs["ids"][0], inputs["expressions"][batch:batch + 1], reference_image=ref,
                 latents=inputs["latents"][:1], num_inference_steps=2)
        assert len(recordings) == 1
        pipe(inputs["ids"][0], inputs["expressions"][:1], reference_image=255 - ref, latents=inputs["latents"][:1],
             num_inference_steps=2)
        assert len(recordings) == 2
    finally:
        pipe.unet.forward = original


def test_per_frame_references(pipe, inputs):
    refs = [inputs["reference"], 255 - inputs["reference"]]
    both = pipe(inputs["ids"][0], inputs["expressions"][:2], reference_image=refs, latents=inputs["latents"][:2],
                num_inference_steps=STEPS).images
    for i in range(2):
        alone = pipe(inputs["ids"][0], inputs["expressions"][i:i + 1], reference_image=refs[i],
                     latents=inputs["latents"][i:i + 1], num_inference_steps=STEPS).images
        assert np.abs(both[i] - alone[0]).max() < 1e-4
    # a list must hold one reference or one per frame: two for three frames is refused, not padded
    for short in (refs, np.stack(refs)):
        with pytest.raises(ValueError, match=r"2 reference images for a batch of 3 \(give 1 or 3\)"):
            pipe(inputs["ids"][0], inputs["expressions"][:3], reference_image=short, num_inference_steps=STEPS)


def test_seed_gives_every_frame_the_same_noise(pipe, inputs):
    same = torch.zeros(2, 55)
    shared = pipe(inputs["ids"][0], same, generator=torch.Generator().manual_seed(7), num_inference_steps=2).images
    assert np.abs(shared[0] - shared[1]).max() < 1e-5  # equal up to the rounding of a row's place in the batch
    per_frame = pipe(inputs["ids"][0], same, generator=torch.Generator().manual_seed(7), per_frame_noise=True,
                     num_inference_steps=2).images
    assert np.abs(per_frame[0] - per_frame[1]).max() > 1e-3


def test_clip_noise_does_not_depend_on_batching():
    whole = clip_noise(5, range(6), (4, 8, 8), per_frame=True)
    parts = torch.cat([clip_noise(5, range(0, 4), (4, 8, 8), per_frame=True),
                       clip_noise(5, range(4, 6), (4, 8, 8), per_frame=True)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole[0], whole[1])
    shared = clip_noise(5, [10, 11, 12], (4, 8, 8))
    assert torch.equal(shared[0], shared[2]) and torch.equal(shared[0], clip_noise(5, [0], (4, 8, 8))[0])


def test_output_types_and_input_validation(pipe, inputs):
    kw = dict(latents=inputs["latents"][:2], num_inference_steps=2)
    np_out = pipe(inputs["ids"][0], inputs["expressions"][:2], **kw).images
    pt = pipe(inputs["ids"][0], inputs["expressions"][:2], output_type="pt", **kw).images
    pil = pipe(inputs["ids"][0], inputs["expressions"][:2], output_type="pil", **kw).images
    assert pt.shape == (2, 3, 32, 32)
    assert np.allclose(pt.permute(0, 2, 3, 1).numpy(), np_out)
    assert len(pil) == 2 and pil[0].size == (32, 32)
    assert np.abs(np.asarray(pil[0]) / 255.0 - np_out[0]).max() <= 0.5 / 255 + 1e-6
    assert np_out.min() >= 0 and np_out.max() <= 1
    # uint8, rounded on the device: exactly the host's rounding of the float images (halves to even, as np.rint)
    quantised = pipe(inputs["ids"][0], inputs["expressions"][:2], output_type="uint8", **kw).images
    assert quantised.dtype == np.uint8 and quantised.shape == (2, 32, 32, 3)
    assert np.array_equal(quantised, np.clip(np.rint(np_out * 255.0), 0, 255).astype(np.uint8))
    halves = torch.tensor([0.5, 1.5, 2.5, 253.5, 254.5, 255.5, -3.0, 300.0]) / 255.0
    assert to_uint8(halves).tolist() == np.clip(np.rint(halves.numpy() * 255.0), 0, 255).astype(np.uint8).tolist()
    with pytest.raises(ValueError, match=r"expressions must be \[B, 55\]"):
        pipe(inputs["ids"][0], torch.zeros(2, 54), num_inference_steps=2)
    with pytest.raises(ValueError, match="3 identities for 2 expressions"):
        pipe(inputs["ids"], torch.zeros(2, 55), num_inference_steps=2)
    with pytest.raises(ValueError, match=r"latents must be \[2, 4, 16, 16\]"):
        pipe(inputs["ids"][0], torch.zeros(2, 55), latents=torch.zeros(2, 4, 8, 8), num_inference_steps=2)
    nan = torch.zeros(2, 55)
    nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="expressions hold NaN or infinite values"):
        pipe(inputs["ids"][0], nan, num_inference_steps=2)
    for steps in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_inference_steps must be a whole number >= 1"):
            pipe(inputs["ids"][0], torch.zeros(2, 55), num_inference_steps=steps)
    for identity in (torch.zeros(512), torch.full((512,), float("nan")), torch.stack([inputs["ids"][0], torch.zeros(512)])):
        with pytest.raises(ValueError, match="id_embeds must be finite, non-zero ArcFace vectors"):
            pipe(identity, torch.zeros(2, 55), num_inference_steps=2)
    # raw ArcFace vectors are normalised inside: the scale of the input does not matter
    a = pipe(inputs["ids"][0], inputs["expressions"][:1], latents=inputs["latents"][:1], num_inference_steps=2).images
    b = pipe(inputs["ids"][0] * 9.0, inputs["expressions"][:1], latents=inputs["latents"][:1], num_inference_steps=2).images
    assert np.abs(a - b).max() < 1e-5


def test_low_precision_weights_track_fp32(tiny_checkpoint, pipe, inputs):
    """bf16 (the GPU default) runs every component in one dtype and stays close to the fp32 result."""
    from retarget import ExpressionPipeline

    half = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu",
                                              dtype="bf16")
    dtypes = {p.dtype for m in (half.unet, half.vae, half.text_encoder, half.expression_projection) for p in m.parameters()}
    assert dtypes == {torch.bfloat16}
    kw = dict(reference_image=inputs["reference"], latents=inputs["latents"][:2], num_inference_steps=STEPS)
    low = half(inputs["ids"][0], inputs["expressions"][:2], **kw).images
    full = pipe(inputs["ids"][0], inputs["expressions"][:2], **kw).images
    assert low.dtype == np.float32 and low.shape == full.shape
    assert np.abs(low - full).mean() < 0.02


def test_a_pipeline_that_rendered_other_jobs_renders_like_a_fresh_one(tiny_checkpoint, inputs):
    """What a pipeline keeps between calls (identity prompt, reference features and their keys/values, folded
    LoRA weights) never leaks into a later job: after jobs with other references, scales, steps, guidance and
    batch sizes, a job's faces are bit-identical to a fresh pipeline's."""
    from retarget import ExpressionPipeline

    def load():
        return ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")

    ids, expressions, latents, ref = inputs["ids"], inputs["expressions"], inputs["latents"], inputs["reference"]
    job = dict(reference_image=ref, reference_scale=0.8, expression_scale=1.5, num_inference_steps=2,
               guidance_scale=1.0, latents=latents)
    fresh = load()(ids[0], expressions, **job).images
    warm = load()
    for _ in range(2):  # new banks may reuse the memory (and id()) of freed ones
        warm(ids[1], expressions[:2], reference_image=255 - ref, reference_scale=0.3, num_inference_steps=1,
             guidance_scale=2.0, latents=latents[:2])
        warm(ids, expressions, reference_image=[ref, 255 - ref, ref], reference_scale=1.0, num_inference_steps=1,
             latents=latents)
        warm(ids[2], expressions[:1], num_inference_steps=1, latents=latents[:1])
        np.testing.assert_array_equal(warm(ids[0], expressions, **job).images, fresh)


def test_a_call_stopped_between_steps_leaves_the_pipeline_as_fresh(tiny_checkpoint, inputs, monkeypatch):
    """A job stopped in the middle of the denoising loop (the web app's Cancel checks at each step of the step
    bar, see ``progress``) leaves nothing behind: the next job's faces are bit-identical to a fresh pipeline's."""
    import tqdm.auto

    from retarget import ExpressionPipeline

    def load():
        return ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")

    class Stopped(Exception):
        pass

    def stopping_bar(steps, **kwargs):  # a bar whose second step raises, as a cancelled job's does
        for index, step in enumerate(steps):
            if index == 1:
                raise Stopped
            yield step

    ids, expressions, latents, ref = inputs["ids"], inputs["expressions"], inputs["latents"], inputs["reference"]
    job = dict(reference_image=ref, reference_scale=0.8, num_inference_steps=3, latents=latents)
    fresh = load()(ids[0], expressions, **job).images
    stopped = load()
    with monkeypatch.context() as patch:
        patch.setattr(tqdm.auto, "tqdm", stopping_bar)
        with pytest.raises(Stopped):
            stopped(ids[1], expressions[:2], reference_image=255 - ref, reference_scale=0.3, num_inference_steps=3,
                    latents=latents[:2], progress=True)
    np.testing.assert_array_equal(stopped(ids[0], expressions, **job).images, fresh)


def test_upcast_vae_casts_to_fp32_without_diffusers_warning(tiny_checkpoint):
    """``--vae-fp32``: the VAE runs in fp32, and diffusers' warning about modules to keep in float32 (which its own
    ``to`` prints on any dtype change) is not shown for a cast to float32 itself."""
    from retarget import ExpressionPipeline

    import logging

    half = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu",
                                              dtype=torch.bfloat16)
    assert {p.dtype for p in half.vae.parameters()} == {torch.bfloat16}
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    source = logging.getLogger("diffusers.models.modeling_utils")  # diffusers' loggers do not propagate
    source.addHandler(handler)
    try:
        half.upcast_vae()
    finally:
        source.removeHandler(handler)
    assert {p.dtype for p in half.vae.parameters()} == {torch.float32} and half.vae_dtype == torch.float32
    assert [r.getMessage() for r in records] == []
