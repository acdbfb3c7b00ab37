"""Both training stages on a tiny random Arc2Face: loss, frozen weights, resume, condition dropout, outputs."""

import json
import shutil

import numpy as np
import pytest
import torch

from retarget.errors import InputError
from retarget.models.formats import read_expression_adapter, read_reference_lora
from retarget.models.loading import load_identity_encoder_model, load_unet, load_vae
from train import expression_adapter, reference_adapter
from train.backbone import Backbone

from .conftest import common_args, write_data_folder

STAGE1_STEPS = 24
STAGE2_STEPS = 20


def run(stage, argv):
    return stage.train(stage.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def fixed_batch_data(tmp_path_factory):
    """Two frames of one clip, 0.5 s apart: with batch size 2 every step sees the same batch in both stages."""
    return write_data_folder(tmp_path_factory.mktemp("fixed"), images=0, clips=1, frames=2, fps=2.0)


@pytest.fixture(scope="module")
def stage1(tiny_checkpoint, fixed_batch_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    return run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, out, STAGE1_STEPS,
                                               checkpointing_steps=12)), out


@pytest.fixture(scope="module")
def stage2(tiny_checkpoint, fixed_batch_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2")
    argv = common_args(tiny_checkpoint, fixed_batch_data, out, STAGE2_STEPS, lr=1e-2, rank=4, window=1.0,
                       exp_adapter=tiny_checkpoint.models_dir / "exp_adapter" / "exp_adapter.bin")
    return run(reference_adapter, argv), out


def _first_last(losses, n=5):
    return float(np.mean(losses[:n])), float(np.mean(losses[-n:]))


def test_stage1_loss_goes_down_on_a_fixed_batch(stage1):
    result, _ = stage1
    assert (result.start_step, result.step, len(result.losses)) == (0, STAGE1_STEPS, STAGE1_STEPS)
    first, last = _first_last(result.losses)
    print(f"stage 1 loss: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < 0.9 * first


def _fixed_loss(module, batch, seeds=8):
    """Mean loss over fixed noise/timestep draws (no dropout): the training signal without sampling noise."""
    module.condition_dropout = 0.0
    with torch.no_grad():
        return float(np.mean([float(module(batch, generator=torch.Generator().manual_seed(s))) for s in range(seeds)]))


def test_stage2_loss_goes_down_on_a_fixed_batch(stage2, tiny_checkpoint, fixed_batch_data):
    from torch.utils.data import default_collate

    from train.data import FaceSamples, ReferencePairs

    result, _ = stage2
    assert (result.start_step, result.step) == (0, STAGE2_STEPS)
    pairs = ReferencePairs(FaceSamples(fixed_batch_data), window=1.0)
    batch = default_collate([pairs[0], pairs[1]])
    untrained = reference_adapter.ReferenceAdapterTraining(
        Backbone.load(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir),
        tiny_checkpoint.models_dir / "exp_adapter" / "exp_adapter.bin", rank=4)
    before, after = _fixed_loss(untrained, batch), _fixed_loss(result.module, batch)
    first, last = _first_last(result.losses)
    print(f"stage 2 loss: fixed draws {before:.4f} -> {after:.4f}; training first 5 {first:.4f}, last 5 {last:.4f}")
    assert after < 0.95 * before


def _assert_backbone_unchanged(module, checkpoint):
    """Every original weight of the UNet, VAE and identity encoder equals the file, bit for bit."""
    references = {
        "unet": load_unet(checkpoint.models_dir / "arc2face").state_dict(),
        "vae": load_vae(checkpoint.base_dir / "vae").state_dict(),
        "text_encoder": load_identity_encoder_model(checkpoint.models_dir / "encoder").state_dict(),
    }
    for part, reference in references.items():
        trained = {name.replace(".base_layer", ""): p for name, p in getattr(module, part).named_parameters()
                   if ".processor." not in name and "lora_" not in name}
        assert set(trained) == set(reference)
        for name, param in trained.items():
            assert not param.requires_grad, name
            assert torch.equal(param.detach(), reference[name]), f"{part}.{name} changed"


def test_stage1_trains_only_the_adapter(stage1, tiny_checkpoint):
    result, _ = stage1
    module = result.module
    _assert_backbone_unchanged(module, tiny_checkpoint)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == set(module.trainable_state_dict())
    # projection (6 tensors) + to_k_ip/to_v_ip of the 4 cross-attention layers of the tiny UNet
    assert len(module.layers) == 4 and len(trainable) == 6 + 2 * 4
    # IP-Adapter init: to_k_ip started as the layer's to_k; training moved it
    for name, attn in module.layers:
        assert not torch.equal(module.adapter_processors[name].to_k_ip.weight, attn.to_k.weight)
        assert (module.adapter_processors[name].to_k_ip.weight - attn.to_k.weight).abs().max() < 0.1


def test_stage2_trains_only_the_lora(stage2, tiny_checkpoint):
    result, _ = stage2
    module = result.module
    _assert_backbone_unchanged(module, tiny_checkpoint)
    image_proj, ip_adapter = read_expression_adapter(tiny_checkpoint.models_dir / "exp_adapter" / "exp_adapter.bin")
    for key, value in module.projection.state_dict().items():
        assert torch.equal(value, image_proj[key])
    trained_ip = {n: p for n, p in module.named_parameters() if n.endswith("_ip.weight")}
    assert len(trained_ip) == len(ip_adapter) and not any(p.requires_grad for p in trained_ip.values())
    assert all(any(torch.equal(p, v) for v in ip_adapter.values()) for p in trained_ip.values())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == set(module.trainable_state_dict()) and len(trainable) == 2 * 4 * 4  # A,B x 4 proj x 4 attn1
    assert all(float(up.detach().abs().max()) > 0 for _, up in module.lora_layers().values())  # moved off the zero init


def test_resume_continues_the_step_count_and_the_run(stage1, tiny_checkpoint, fixed_batch_data, tmp_path):
    straight, out = stage1
    resumed = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path, STAGE1_STEPS,
                                                  resume=out / "checkpoints" / "step-12"))
    assert (resumed.start_step, resumed.step, len(resumed.losses)) == (12, STAGE1_STEPS, STAGE1_STEPS - 12)
    assert np.allclose(resumed.losses, straight.losses[12:], rtol=1e-5, atol=1e-6)
    a, b = read_expression_adapter(straight.output), read_expression_adapter(resumed.output)
    for part_a, part_b in zip(a, b):
        for key in part_a:
            assert torch.allclose(part_a[key], part_b[key], atol=1e-6), key
    # 'latest' picks the newest checkpoint of the output folder and goes on from there
    more = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path, STAGE1_STEPS + 2,
                                               resume="latest"))
    assert (more.start_step, more.step) == (STAGE1_STEPS, STAGE1_STEPS + 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{STAGE1_STEPS}",
                                                                           f"step-{STAGE1_STEPS + 2}"]


def test_resume_latest_without_checkpoints_starts_fresh(tiny_checkpoint, fixed_batch_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="train"):
        result = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path, 1, resume="latest"))
    assert (result.start_step, result.step) == (0, 1)
    assert f"no checkpoint under {tmp_path / 'checkpoints'}: starting at step 0" in caplog.messages


def test_resume_with_other_settings_warns_and_uses_them(stage1, tiny_checkpoint, fixed_batch_data, tmp_path, caplog):
    """The checkpoint records its run's settings: the same ones resume silently (test above); another --lr and
    --weight-decay are named in one warning, and the new values are the ones the optimizer uses from there."""
    straight, out = stage1
    step12 = out / "checkpoints" / "step-12"
    assert json.loads((step12 / "progress.json").read_text())["settings"]["lr"] == 1e-3
    with caplog.at_level("WARNING", logger="train"):
        same = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path / "same", 14,
                                                   resume=step12))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with caplog.at_level("WARNING", logger="train"):
        faster = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path / "faster", 14,
                                                     lr=0.5, weight_decay=0.05, resume=step12))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"resuming {step12} with other settings than it was saved with: --lr 0.5 (checkpoint: "
                        "0.001), --weight-decay 0.05 (checkpoint: 0.01); this run goes on with the new ones, so it does not repeat "
                        "the uninterrupted run"]
    assert np.allclose(same.losses, straight.losses[12:14], rtol=1e-5, atol=1e-6)
    assert faster.losses[0] == pytest.approx(same.losses[0], rel=1e-5)  # step 13 starts from the same weights
    assert abs(faster.losses[1] - same.losses[1]) > 1e-3  # ... and its update used --lr 0.5
    assert faster.module.trainable_state_dict().keys() == same.module.trainable_state_dict().keys()


def test_a_run_does_not_start_over_an_earlier_runs_checkpoints(stage1, tiny_checkpoint, fixed_batch_data, capsys):
    _, out = stage1
    assert expression_adapter.main(common_args(tiny_checkpoint, fixed_batch_data, out, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out / 'checkpoints'} holds checkpoints of an earlier run (newest step-{STAGE1_STEPS}); "
                   "continue it with --resume latest, or give another --output"]


def test_a_checkpoint_appears_only_when_complete(tiny_checkpoint, fixed_batch_data, tmp_path, monkeypatch):
    """A run stopped while saving leaves step-N.partial, which 'latest' does not take; the next save of that step
    replaces it."""
    from train import loop

    def stop(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.os, "replace", stop)
    with pytest.raises(KeyboardInterrupt):
        run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path, 2, checkpointing_steps=2))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2.partial"]
    assert (tmp_path / "checkpoints" / "step-2.partial" / "progress.json").is_file()  # complete but for the rename
    again = run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path, 2, checkpointing_steps=2,
                                                resume="latest"))
    assert (again.start_step, again.step) == (0, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]


@pytest.mark.parametrize("damage", ["garbage weights", "no optimizer", "broken progress"])
def test_a_damaged_checkpoint_is_one_line(stage1, tiny_checkpoint, fixed_batch_data, tmp_path, capsys, damage):
    copy = tmp_path / "out" / "checkpoints" / "step-12"
    shutil.copytree(stage1[1] / "checkpoints" / "step-12", copy)
    if damage == "garbage weights":
        (copy / "trainable.safetensors").write_bytes(b"\xff" * 64)
    elif damage == "no optimizer":
        next(copy.glob("optimizer*")).unlink()
    else:
        (copy / "progress.json").write_text("{")
    argv = common_args(tiny_checkpoint, fixed_batch_data, tmp_path / "out", STAGE1_STEPS, resume="latest")
    assert expression_adapter.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot resume from {copy}: ")
    assert err[0].endswith("(give an earlier checkpoint with --resume PATH)")


def test_a_checkpoint_without_its_random_state_is_named(stage1, tiny_checkpoint, fixed_batch_data, tmp_path, caplog):
    copy = tmp_path / "out" / "checkpoints" / "step-12"
    shutil.copytree(stage1[1] / "checkpoints" / "step-12", copy)
    (copy / "random_states_0.pkl").unlink()
    with caplog.at_level("WARNING", logger="train"):
        run(expression_adapter, common_args(tiny_checkpoint, fixed_batch_data, tmp_path / "out", 13, resume="latest"))
    assert caplog.messages == [f"resuming {copy} with other settings than it was saved with: no random state for "
                               "process 0; this run goes on with the new ones, so it does not repeat the "
                               "uninterrupted run"]


def test_a_checkpoint_of_other_shapes_is_refused(tmp_path):
    from train.loop import load_trainable

    class Module(torch.nn.Module):
        def __init__(self, rank):
            super().__init__()
            self.down = torch.nn.Parameter(torch.zeros(rank, 8))

        def trainable_state_dict(self):
            return {"down": self.down}

    with pytest.raises(InputError, match=r"'down' is \[4, 8\], this run trains \[2, 8\] \(the checkpoint was "
                                         r"trained with other settings\)"):
        load_trainable(Module(2), {"down": torch.ones(4, 8)}, tmp_path / "trainable.safetensors")


@pytest.mark.parametrize("stage", ["expression", "reference"])
def test_dropped_rows_are_the_unconditional_branch(stage, tiny_checkpoint, fixed_batch_data, stage1):
    """With every row dropped the loss ignores identity, expression and reference; without dropout it does not."""
    from torch.utils.data import default_collate

    from train.data import FaceSamples, ReferencePairs

    backbone = Backbone.load(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir)
    samples = FaceSamples(fixed_batch_data)
    if stage == "expression":
        module = expression_adapter.ExpressionAdapterTraining(backbone)
        batch = default_collate([samples[0], samples[1]])
    else:
        module = reference_adapter.ReferenceAdapterTraining(backbone, stage1[0].output, rank=4)
        with torch.no_grad():
            for _, up in module.lora_layers().values():
                up.normal_(std=0.1)  # a LoRA that does something, as after training
        pairs = ReferencePairs(samples, window=1.0)
        batch = default_collate([pairs[0], pairs[1]])
    other = {k: (v.flip(0) if k != "pixels" else v) for k, v in batch.items()}
    other["expression"] = other["expression"] + 1

    def loss(b, p):
        module.condition_dropout = p
        with torch.no_grad():
            return float(module(b, generator=torch.Generator().manual_seed(5)))

    assert loss(batch, 0.999999) == loss(other, 0.999999)
    assert abs(loss(batch, 0.0) - loss(other, 0.0)) > 1e-6


def test_outputs_load_in_the_pipeline_and_the_stock_loaders(stage1, stage2, tiny_checkpoint, tmp_path):
    from eval.official_recipe import OfficialRecipe
    from retarget import ExpressionPipeline

    models = tmp_path / "models"
    for part in ("arc2face", "encoder"):
        shutil.copytree(tiny_checkpoint.models_dir / part, models / part)
    shutil.copytree(stage1[1] / "exp_adapter", models / "exp_adapter")
    shutil.copytree(stage2[1] / "ref_adapter", models / "ref_adapter")

    pipe = ExpressionPipeline.from_pretrained(models, tiny_checkpoint.base_dir, device="cpu")
    image_proj, _ = read_expression_adapter(models / "exp_adapter" / "exp_adapter.bin")
    assert torch.equal(pipe.expression_projection.state_dict()["proj.0.weight"], image_proj["proj.0.weight"])
    official = OfficialRecipe(models, tiny_checkpoint.base_dir)
    lora = read_reference_lora(models / "ref_adapter" / "pytorch_lora_weights.safetensors")
    name, (down, up) = next(iter(lora.items()))
    stock_layer = dict(official.pipe.unet.named_modules())[name]
    assert torch.equal(stock_layer.lora_A["ref"].weight, down) and torch.equal(stock_layer.lora_B["ref"].weight, up)

    rng = np.random.default_rng(0)
    identity, expression = rng.normal(size=512).astype(np.float32), rng.normal(size=(1, 55)).astype(np.float32)
    reference = (rng.uniform(size=(32, 32, 3)) * 255).astype(np.uint8)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = pipe(identity, expression, reference_image=reference, latents=latents, num_inference_steps=3).images[0]
    stock = official.render_one(identity, expression[0], reference_image=reference, latents=latents,
                                num_inference_steps=3)
    assert np.isfinite(ours).all() and np.abs(ours - stock).max() < 1e-3


def test_adapter_initialisation(tiny_checkpoint):
    """Fresh: to_k_ip/to_v_ip copy the layer's to_k/to_v (IP-Adapter). --init-from: the published file, exactly."""
    backbone = Backbone.load(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir)
    fresh = expression_adapter.ExpressionAdapterTraining(backbone)
    for name, attn in fresh.layers:
        assert torch.equal(fresh.adapter_processors[name].to_k_ip.weight, attn.to_k.weight)
        assert torch.equal(fresh.adapter_processors[name].to_v_ip.weight, attn.to_v.weight)

    path = tiny_checkpoint.models_dir / "exp_adapter" / "exp_adapter.bin"
    backbone = Backbone.load(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir)
    loaded = expression_adapter.ExpressionAdapterTraining(backbone, init_from=path)
    for ours, published in zip(loaded.published_state(), read_expression_adapter(path)):
        assert set(ours) == set(published)
        assert all(torch.equal(ours[k], published[k]) for k in ours)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(loaded.trainable_state_dict())
