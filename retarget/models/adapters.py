"""The LoRA adapters of a UNet (the reference LoRA, optionally an LCM-LoRA), applied at chosen scales.

peft computes a LoRA as an extra ``B(A(x)) * scale`` next to every adapted layer. For inference at fixed scales
:class:`AdapterWeights` can instead *fold* the adapters into the base weights, ``W = W0 + sum(scale * B @ A)``
(computed in float32), and switch peft's extra term off: the same math, one matmul per layer and no per-layer
Python numbers left in the forward pass. The original base weights ``W0`` are kept (a copy per adapted layer) and
copied back exactly when the adapters change or are switched off, so repeated folding never drifts.
"""

from __future__ import annotations

import torch
from torch import nn


def lora_layers(unet: nn.Module) -> list[nn.Module]:
    """Every peft LoRA layer of ``unet`` (empty when no adapter is loaded)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


class AdapterWeights:
    """Puts the UNet's LoRA adapters at ``{adapter name: scale}`` (see :meth:`apply`), folded or computed by peft.

    ``fold=True`` (inference default): adapters are folded into the base weights, peft's LoRA branch is off.
    ``fold=False``: the base weights stay as loaded and peft adds each active adapter at its scale (the stock
    diffusers behaviour; slower, kept for comparison). Either way ``apply({})`` leaves the plain UNet: base weights
    exactly as loaded and no LoRA term (what the reference pass needs). ``version`` increases whenever the
    effective weights change, so callers can drop values they derived from the old ones.
    """

    def __init__(self, unet: nn.Module, fold: bool = True):
        self.unet = unet
        self.fold = fold
        self.version = 0
        self._state: tuple | None = None
        self._originals: dict[nn.Module, torch.Tensor] = {}

    def _restore(self) -> None:
        with torch.no_grad():
            for layer, weight in self._originals.items():
                layer.get_base_layer().weight.copy_(weight)

    def apply(self, scales: dict[str, float]) -> bool:
        """Put the adapters named in ``scales`` at those scales and every other adapter off.

        Returns whether the weights changed (False when the same state is already applied).
        """
        state = (self.fold, tuple(sorted((name, float(s)) for name, s in scales.items())))
        if state == self._state:
            return False
        layers = lora_layers(self.unet)
        self._restore()
        if scales and not self.fold:
            self.unet.set_adapters(list(scales), weights=[float(s) for s in scales.values()])
            for layer in layers:
                layer.enable_adapters(True)
        else:
            for layer in layers:
                layer.enable_adapters(False)
            if scales:
                self._fold(layers, scales)
        self._state = state
        self.version += 1
        return True

    def _fold(self, layers, scales: dict[str, float]) -> None:
        with torch.no_grad():
            for layer in layers:
                names = [name for name in scales if name in layer.lora_A]
                if not names:
                    continue
                base = layer.get_base_layer()
                if layer not in self._originals:
                    self._originals[layer] = base.weight.detach().clone()
                weight = self._originals[layer].float()
                for name in names:
                    layer.set_scale(name, float(scales[name]))
                    weight = weight + layer.get_delta_weight(name).float()
                base.weight.copy_(weight)

    def reset(self) -> None:
        """Forget the applied state (call after adapters are added), keeping the stored original weights."""
        self._state = None
