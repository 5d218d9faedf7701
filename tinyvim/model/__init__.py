"""The TinyViM network, its checkpoints, and its re-parameterization."""
from __future__ import annotations

import os

import torch
from torch import nn

from tinyvim.contract import (
    DEFAULT_VARIANT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_MULTIPLE,
    ModelSpec,
    check_input_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.model.checkpoint import (
    MAX_CLASSES,
    backbone_state,
    file_sha256,
    infer_variant,
    load_into,
    read_checkpoint,
)
from tinyvim.model.tinyvim import VARIANTS, DeployTinyViM, TinyViM, variant_config

# Registers the "cuda" scan implementation with tinyvim.ops (loads nothing until a CUDA tensor asks for it).
import tinyvim.plugins.torch_cuda  # noqa: E402,F401  isort: skip


def create_model(variant: str = DEFAULT_VARIANT, *, checkpoint: str | os.PathLike | None = None, backbone: bool = False,
                 ema: bool = False, seed: int = 0, num_classes: int = 1000, allow_nonfinite: bool = False) -> TinyViM:
    """An eval-mode TinyViM (unfused, float32).

    checkpoint: an official-format file (bare state dict, {'model'}, {'state_dict'},
    {'model_ema'} with ema=True); None gives deterministic random weights from `seed`.
    backbone: the detection/segmentation trunk with four outputs through norm0/2/4/6.
    allow_nonfinite: load a checkpoint whose weights hold NaN/Inf (refused by default).
    """
    cfg = variant_config(variant)
    state = read_checkpoint(checkpoint, ema=ema, allow_nonfinite=allow_nonfinite) if checkpoint is not None else None
    distillation = True if state is None else any(k.startswith("dist_head.") for k in state)
    if state is not None and not backbone and "head.weight" in state:
        head = state["head.weight"]
        if head.dim() != 2 or not 1 <= head.shape[0] <= MAX_CLASSES:
            raise TinyvimError(f"checkpoint {checkpoint}: head.weight has shape {tuple(head.shape)}, not "
                               f"(classes, features) with 1..{MAX_CLASSES} classes: not a TinyViM classifier")
        num_classes = head.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyViM(cfg.name, num_classes=num_classes, distillation=distillation, fork_feat=backbone)
    if state is not None:
        allowed: tuple[str, ...] = ()
        if backbone:
            state, allowed = backbone_state(state)
        load_into(model, state, cfg.name, str(checkpoint), allowed_missing=allowed)
    return model.eval()


def build_model(spec: ModelSpec) -> TinyViM:
    """The eval-mode, unfused TinyViM a ModelSpec names (create_model with its fields)."""
    return create_model(spec.variant, checkpoint=spec.checkpoint, backbone=spec.backbone, ema=spec.ema,
                        seed=spec.weight_seed, allow_nonfinite=spec.allow_nonfinite)


def reparameterize(model: nn.Module) -> nn.Module:
    """A new, fused deploy model (the input is left untouched), in eval mode."""
    if isinstance(model, DeployTinyViM):
        return model
    if not isinstance(model, TinyViM):
        raise TypeError(f"reparameterize expects a TinyViM model, got {type(model).__name__}")
    return model.fuse().eval()


class FP16Wrapper(nn.Module):
    """float32 images in, float32 outputs out, float16 inside (an fp16 export): runners and
    validation stay dtype-agnostic; the scan and LayerNorm statistics still compute in float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x):
        out = self.model(x.half())
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_MULTIPLE", "VARIANTS", "DeployTinyViM", "FP16Wrapper", "TinyViM",
    "backbone_state", "build_model", "check_input_size", "count_parameters", "create_model", "file_sha256",
    "infer_variant", "load_into", "read_checkpoint", "reparameterize", "variant_config",
]
