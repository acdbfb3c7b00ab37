"""The denoising objective and the condition dropout shared by both stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_prediction_loss(unet, noise_scheduler, latents: torch.Tensor, prompts: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard diffusion loss: noise ``latents`` at uniformly drawn timesteps and regress the scheduler's target.

    The target is the noise for ``prediction_type == "epsilon"`` (SD1.5) or the velocity for
    ``"v_prediction"``. The UNet's attention processors read the rest of the conditioning from their context.
    Returns the mean squared error over all elements as a float32 scalar.
    """
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=device).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    unet_dtype = next(unet.parameters()).dtype
    prediction = unet(noisy.to(unet_dtype), timesteps, encoder_hidden_states=prompts.to(unet_dtype),
                      return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float())


def draw_unconditional(batch: int, probability: float, device,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool ``[batch]``: which rows train the unconditional branch of classifier-free guidance."""
    if probability <= 0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, generator=generator, device=device) < probability
