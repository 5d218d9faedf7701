"""Test helpers: models whose fusions are actually exercised."""
from __future__ import annotations

import torch
from torch import nn

import tinyvim


@torch.no_grad()
def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms and every layer_scale
    a large value: with the default init (BN ≈ identity, layer_scale = 1e-5) a wrong
    fusion would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.2, generator=g)
        elif isinstance(m, nn.LayerNorm):
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.2, generator=g)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):
            p.uniform_(0.2, 1.0, generator=g)
        elif name.endswith("conv1.bias"):
            p.normal_(0, 0.2, generator=g)
    return model


def make_model(variant: str = "s", **kwargs) -> nn.Module:
    return perturb_(tinyvim.create_model(variant, **kwargs))
