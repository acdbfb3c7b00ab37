"""Few-step sampling with an SD1.5 LCM-LoRA (random weights in the published key layouts) and LCMScheduler."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from retarget.errors import InputError, WeightsError
from retarget.testing.checkpoints import random_lcm_lora

STEPS = 4


@pytest.fixture(scope="module")
def lcm_files(tmp_path_factory, tiny_checkpoint):
    """``{"kohya", "peft", "zero"}`` -> LoRA files for the tiny UNet (kohya and peft hold the same weights)."""
    from retarget.models.loading import load_unet

    unet = load_unet(tiny_checkpoint.models_dir / "arc2face")
    folder = tmp_path_factory.mktemp("lcm")
    files = {}
    for name, kwargs in {"kohya": {}, "peft": {"key_format": "peft"}, "zero": {"zero": True}}.items():
        state = random_lcm_lora(unet, rank=4, generator=torch.Generator().manual_seed(5), std=0.1, **kwargs)
        files[name] = folder / f"{name}.safetensors"
        save_file(state, str(files[name]))
    return files


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(21)
    return dict(
        ids=torch.randn(512, generator=g),
        expressions=torch.randn(3, 55, generator=g),
        latents=torch.randn(3, 4, 16, 16, generator=g),
        reference=(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy(),
    )


def _pipe(tiny_checkpoint, lcm_file=None):
    from retarget import ExpressionPipeline

    pipe = ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")
    if lcm_file is not None:
        pipe.load_lcm_lora(lcm_file)
    return pipe


def _render(pipe, clip, rows=slice(0, 3)):
    return pipe(clip["ids"], clip["expressions"][rows], reference_image=clip["reference"], latents=clip["latents"][rows],
                num_inference_steps=STEPS, guidance_scale=1.5).images


@pytest.fixture(scope="module")
def lcm_pipe(tiny_checkpoint, lcm_files):
    return _pipe(tiny_checkpoint, lcm_files["kohya"])


@pytest.fixture(scope="module")
def scheduler_only(tiny_checkpoint):
    """No LCM-LoRA, but the LCM scheduler."""
    pipe = _pipe(tiny_checkpoint)
    pipe.sampler = "lcm"
    return pipe


def test_lcm_lora_samples_with_the_lcm_scheduler(lcm_pipe, scheduler_only, tiny_checkpoint, clip):
    from diffusers import LCMScheduler

    from retarget.models.adapters import lora_layers

    assert isinstance(lcm_pipe.scheduler(), LCMScheduler)
    assert sum("lcm" in layer.lora_A for layer in lora_layers(lcm_pipe.unet)) > 20  # attention, ResNets, samplers
    calls = []
    handle = lcm_pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        fast = _render(lcm_pipe, clip)
    finally:
        handle.remove()
    assert calls == [1] + [6] * STEPS  # the reference pass, then STEPS denoising steps of 3 frames x CFG
    assert fast.shape == (3, 32, 32, 3)
    assert np.abs(fast - _render(scheduler_only, clip)).max() > 1e-2  # the LoRA changes the result
    default = _pipe(tiny_checkpoint)
    assert np.abs(fast - _render(default, clip)).max() > 1e-2  # and so does the sampler


def test_zero_lcm_lora_equals_the_lcm_scheduler_alone(tiny_checkpoint, lcm_files, scheduler_only, clip):
    zero = _pipe(tiny_checkpoint, lcm_files["zero"])
    assert np.abs(_render(zero, clip) - _render(scheduler_only, clip)).max() < 1e-6


def test_peft_keys_load_like_kohya_keys(tiny_checkpoint, lcm_files, lcm_pipe, clip):
    peft = _pipe(tiny_checkpoint, lcm_files["peft"])
    assert np.abs(_render(peft, clip) - _render(lcm_pipe, clip)).max() < 1e-5


def test_lcm_folded_equals_peft_and_frames_do_not_depend_on_their_batch(tiny_checkpoint, lcm_files, lcm_pipe, clip):
    folded = _render(lcm_pipe, clip)
    for i in range(3):  # the noise LCM adds at each step is drawn per frame
        alone = _render(lcm_pipe, clip, slice(i, i + 1))
        assert np.abs(alone[0] - folded[i]).max() < 1e-4
    unfolded = _pipe(tiny_checkpoint, lcm_files["kohya"])
    unfolded.optimize(fold_lora=False, fuse_qkv=False)
    assert np.abs(_render(unfolded, clip) - folded).max() < 1e-5


def test_bad_lcm_lora_files(tiny_checkpoint, tmp_path, scheduler_only):
    with pytest.raises(WeightsError, match="missing LCM-LoRA"):
        scheduler_only.load_lcm_lora(tmp_path / "nowhere.safetensors")
    save_file({"text_encoder.layer.lora_A.weight": torch.zeros(2, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="other.safetensors"):
        scheduler_only.load_lcm_lora(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read .*junk.safetensors"):
        scheduler_only.load_lcm_lora(tmp_path / "junk.safetensors")


def test_lcm_lora_option(tmp_path, lcm_files):
    from retarget.cli import build_parser, options_from_args
    from retarget.jobs.options import JobOptions

    args = build_parser().parse_args(["run", "in.mp4", "--identity", "me.jpg", "-o", "out.mp4",
                                      "--lcm-lora", str(lcm_files["kohya"])])
    options = options_from_args(args)
    assert options.lcm_lora == lcm_files["kohya"]
    assert options.render_key()["lcm_lora"]["name"] == "kohya.safetensors"
    assert JobOptions(models=tmp_path).render_key()["lcm_lora"] is None
    assert options.render_key() != JobOptions(**{**vars(options), "lcm_lora": lcm_files["zero"]}).render_key()
    with pytest.raises(InputError, match="--lcm-lora: no such file"):
        JobOptions(models=tmp_path, lcm_lora=tmp_path / "missing.safetensors")


def test_render_session_loads_the_lcm_lora(tiny_checkpoint, lcm_files):
    from diffusers import LCMScheduler

    from retarget.jobs.options import JobOptions
    from retarget.jobs.session import RenderSession

    options = JobOptions(models=tiny_checkpoint.models_dir, base_model=str(tiny_checkpoint.base_dir), device="cpu",
                         lcm_lora=lcm_files["kohya"], steps=STEPS, guidance=1.5, batch_size=2, progress=False)
    session = RenderSession(options)
    assert isinstance(session.pipeline.scheduler(), LCMScheduler) and session.pipeline.has_lcm_adapter
    g = torch.Generator().manual_seed(8)
    faces = session.render(torch.randn(512, generator=g).numpy(), torch.randn(3, 55, generator=g).numpy(),
                           np.arange(3), None)
    assert faces.shape == (3, 32, 32, 3) and faces.dtype == np.uint8
