"""Weight initialisation schemes selected by ``ModelConfig.init``."""

from __future__ import annotations

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@torch.no_grad()
def dcgan_init_(module: nn.Module) -> nn.Module:
    """In place, the DCGAN paper's init as the mnist-cgan spec states it; returns ``module``.

    Conv and ConvTranspose weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias = 0.
    Everything else (Linear layers, conv biases) keeps PyTorch's default, exactly as in the
    original, so recipes that ask for this init reproduce it rather than a variant.
    """
    for m in module.modules():
        if isinstance(m, _CONVS):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, mean=1.0, std=0.02)
            nn.init.zeros_(m.bias)
    return module


@torch.no_grad()
def keras_init_(module: nn.Module) -> nn.Module:
    """In place, Keras's defaults: Dense and Conv kernels Glorot-uniform, biases zero (BatchNorm keeps
    gamma 1, beta 0, which both frameworks share); returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, *_CONVS)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
