"""Strict loading of the published layout: sizes from the files, one clear error naming the file."""

import pickle
import shutil

import pytest
import torch

from retarget import ExpressionPipeline
from retarget.errors import WeightsError
from retarget.models.formats import read_expression_adapter, write_expression_adapter
from retarget.models.loading import load_identity_encoder_model, load_unet, load_vae, resolve_base_model


@pytest.fixture
def models_copy(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint.models_dir, tmp_path / "models")
    return tmp_path / "models"


def test_sizes_follow_the_checkpoint(pipe):
    assert pipe.image_size == 32  # 16 latent x VAE factor 2
    assert pipe.latent_shape == (4, 16, 16)
    assert pipe.expression_projection.n_values == 55
    assert pipe.expression_projection.tokens == 4
    assert pipe.expression_projection.dim == pipe.unet.config.cross_attention_dim == 512


def test_published_text_model_keys_load_into_current_transformers(tiny_checkpoint):
    raw = torch.load(tiny_checkpoint.models_dir / "encoder" / "pytorch_model.bin", weights_only=True)
    assert all(k.startswith("text_model.") for k in raw)
    model = load_identity_encoder_model(tiny_checkpoint.models_dir / "encoder")
    state = model.state_dict()
    for key, value in raw.items():
        bare = key[len("text_model."):]
        target = state[bare] if bare in state else state[key]
        assert torch.equal(target, value)


def test_backbones_load_onto_the_device_in_the_dtype(tiny_checkpoint):
    """Each weight moves and is cast in one step, so on a GPU the cast runs there: the loaders put every tensor on
    the given device in the given dtype (the meta device stands in for a GPU here), and on the CPU the values are
    those of a load followed by a cast."""
    models, base = tiny_checkpoint.models_dir, tiny_checkpoint.base_dir
    loaders = [lambda **kw: load_unet(models / "arc2face", **kw), lambda **kw: load_vae(base / "vae", **kw),
               lambda **kw: load_identity_encoder_model(models / "encoder", **kw)]
    for load in loaders:
        placed = load(dtype=torch.bfloat16, device="meta")
        tensors = list(placed.parameters()) + list(placed.buffers())
        assert tensors and all(t.is_meta for t in tensors)
        assert all(t.dtype == torch.bfloat16 for t in placed.parameters())
        direct = load(dtype=torch.bfloat16, device="cpu").state_dict()
        reference = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load().state_dict().items()}
        assert direct.keys() == reference.keys()
        assert all(torch.equal(direct[k], reference[k]) and direct[k].dtype == reference[k].dtype for k in direct)


def test_missing_expression_adapter_names_the_file(models_copy, tiny_checkpoint):
    (models_copy / "exp_adapter" / "exp_adapter.bin").unlink()
    with pytest.raises(WeightsError, match=r"missing expression adapter: .*exp_adapter\.bin"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_wrong_ip_shape_names_file_and_key(models_copy, tiny_checkpoint):
    path = models_copy / "exp_adapter" / "exp_adapter.bin"
    proj, ip = read_expression_adapter(path)
    ip["3.to_v_ip.weight"] = torch.zeros(7, 512)
    write_expression_adapter(path, proj, ip)
    with pytest.raises(WeightsError, match=r"exp_adapter\.bin: '3\.to_v_ip\.weight' has shape \[7, 512\]"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_token_width_must_match_the_unet(models_copy, tiny_checkpoint):
    path = models_copy / "exp_adapter" / "exp_adapter.bin"
    proj, ip = read_expression_adapter(path)
    proj["proj.2.weight"] = torch.zeros(4 * 256, 110)
    proj["proj.2.bias"] = torch.zeros(4 * 256)
    proj["norm.weight"], proj["norm.bias"] = torch.ones(256), torch.zeros(256)
    write_expression_adapter(path, proj, ip)
    with pytest.raises(WeightsError, match="256-d but the UNet's cross-attention is 512-d"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_expression_input_width_must_be_the_smirk_values(models_copy, tiny_checkpoint):
    path = models_copy / "exp_adapter" / "exp_adapter.bin"
    proj, ip = read_expression_adapter(path)
    proj["proj.0.weight"] = proj["proj.0.weight"][:, :54].clone()
    write_expression_adapter(path, proj, ip)
    with pytest.raises(WeightsError, match=r"exp_adapter\.bin: image_proj proj\.0\.weight is 110x54: it takes 54 "
                                           r"values, not the 55 SMIRK expression values"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_missing_ip_layer_is_reported(models_copy, tiny_checkpoint):
    path = models_copy / "exp_adapter" / "exp_adapter.bin"
    proj, ip = read_expression_adapter(path)
    del ip["7.to_k_ip.weight"], ip["7.to_v_ip.weight"]
    write_expression_adapter(path, proj, ip)
    with pytest.raises(WeightsError, match="has 3 layer pairs, the UNet has 4 cross-attention layers"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(models_copy, tiny_checkpoint, capsys):
    path = models_copy / "exp_adapter" / "exp_adapter.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": _Payload(), "ip_adapter": {}}, f)
    with pytest.raises(WeightsError, match=r"cannot read .*exp_adapter\.bin: it holds Python objects other than "
                                           r"tensors, which are not loaded") as caught:
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)
    assert "weights_only set to False" not in str(caught.value)  # torch's advice would run the payload
    assert "this must never run" not in capsys.readouterr().out


def test_wrong_unet_tensor_shape(models_copy, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    path = models_copy / "arc2face" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.safetensors: 'conv_in\.weight' has shape \[32, 4, 1, 1\]"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_lora_without_up_weight(models_copy, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    path = models_copy / "ref_adapter" / "pytorch_lora_weights.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("attn1.to_k.lora.up.weight"))
    del state[key]
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="lacks its lora.up weight"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_lora_pair_that_does_not_chain_names_both_keys(models_copy, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    path = models_copy / "ref_adapter" / "pytorch_lora_weights.safetensors"
    state = load_file(str(path))
    up = next(k for k in state if k.endswith("attn1.to_k.lora.up.weight"))
    rank = state[up].shape[1]
    state[up] = torch.zeros(state[up].shape[0], rank + 1)
    save_file(state, str(path))
    module = up[: -len(".lora.up.weight")]
    with pytest.raises(WeightsError) as raised:
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)
    assert f"'{module}.lora.down.weight' [{rank}, " in str(raised.value)
    assert f"and '.lora.up.weight' [{state[up].shape[0]}, {rank + 1}] do not chain" in str(raised.value)


def test_lora_wrong_width(models_copy, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    path = models_copy / "ref_adapter" / "pytorch_lora_weights.safetensors"
    state = load_file(str(path))
    down = next(k for k in state if k.endswith("attn1.to_q.lora.down.weight"))
    state[down] = torch.zeros(state[down].shape[0], 3)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"LoRA maps 3->"):
        ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)


def test_reference_adapter_is_optional_but_required_for_references(models_copy, tiny_checkpoint):
    shutil.rmtree(models_copy / "ref_adapter")
    pipe = ExpressionPipeline.from_pretrained(models_copy, tiny_checkpoint.base_dir)
    out = pipe(torch.randn(512), torch.zeros(1, 55), num_inference_steps=2).images
    assert out.shape == (1, 32, 32, 3)
    with pytest.raises(WeightsError, match="pytorch_lora_weights.safetensors"):
        pipe(torch.randn(512), torch.zeros(1, 55), reference_image=torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(),
             num_inference_steps=2)


def test_base_model_errors(tmp_path, tiny_checkpoint):
    (tmp_path / "vae").mkdir()
    with pytest.raises(WeightsError, match="lacks tokenizer/, scheduler/"):
        resolve_base_model(tmp_path)
    with pytest.raises(WeightsError, match="base model not found"):
        resolve_base_model(tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="cannot fetch the base model 'someone/not-here' from the hub"):
        resolve_base_model("someone/not-here")
    assert resolve_base_model(tiny_checkpoint.base_dir) == tiny_checkpoint.base_dir
