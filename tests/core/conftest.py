import pytest
import torch


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    from retarget import ExpressionPipeline

    torch.manual_seed(0)
    return ExpressionPipeline.from_pretrained(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir, device="cpu")


@pytest.fixture(scope="module")
def official(tiny_checkpoint):
    from eval.official_recipe import OfficialRecipe

    return OfficialRecipe(tiny_checkpoint.models_dir, tiny_checkpoint.base_dir)
