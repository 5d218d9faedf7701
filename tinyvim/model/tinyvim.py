"""The TinyViM network: variants, the classifier and the detection/segmentation trunk."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from tinyvim import contract
from tinyvim.contract import check_input_size
from tinyvim.model.layers import Affine2d, Conv2d_BN, LocalBlock
from tinyvim.model.ss2d import TViMBlock


@dataclass(frozen=True)
class VariantConfig:
    name: str
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


VARIANTS = {
    "s": VariantConfig("s", (48, 64, 168, 224), (3, 3, 9, 6)),
    "b": VariantConfig("b", (48, 96, 192, 384), (4, 3, 10, 5)),
    "l": VariantConfig("l", (64, 128, 384, 512), (4, 4, 12, 6)),
}
assert tuple(VARIANTS) == contract.VARIANTS


def variant_config(variant: str) -> VariantConfig:
    return VARIANTS[contract.check_variant(variant)]


def is_tvim_block(stage: int, j: int, depth: int) -> bool:
    """The last block of every stage, and the middle one of stage 3, are TViM blocks."""
    return j == depth - 1 or (stage == 2 and j == depth // 2)


class Embedding(nn.Module):
    """Stride-2 3×3 downsampler between stages."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = Conv2d_BN(in_ch, out_ch, 3, 2, 1)

    def forward(self, x):
        return self.proj(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        return self.proj.fuse()


def stem(width: int) -> nn.Sequential:
    return nn.Sequential(Conv2d_BN(3, width // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(width // 2, width, 3, 2, 1), nn.GELU())


class TinyViM(nn.Module):
    """TinyViM classifier (fork_feat=False) or backbone (fork_feat=True).

    images (B, 3, H, W), H and W multiples of 32 ->
      classifier: logits (B, num_classes) (eval: mean of head and dist_head; train: both)
      backbone:   4 maps (B, C_i, H/4/2^i, W/4/2^i) through norm0/2/4/6
    """

    def __init__(self, variant: str = "s", num_classes: int = 1000, distillation: bool = True,
                 fork_feat: bool = False):
        super().__init__()
        cfg = variant_config(variant)
        self.variant, self.fork_feat, self.distillation = cfg.name, fork_feat, distillation
        self.patch_embed = stem(cfg.widths[0])
        network = []
        for i, (dim, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            network.append(nn.Sequential(*[
                TViMBlock(dim, i) if is_tvim_block(i, j, depth) else LocalBlock(dim) for j in range(depth)]))
            if i < 3:
                network.append(Embedding(dim, cfg.widths[i + 1]))
        self.network = nn.ModuleList(network)
        if fork_feat:
            for idx, dim in zip((0, 2, 4, 6), cfg.widths):
                self.add_module(f"norm{idx}", nn.BatchNorm2d(dim))
        else:
            self.norm = nn.BatchNorm2d(cfg.widths[-1])
            self.head = nn.Linear(cfg.widths[-1], num_classes)
            self.dist_head = nn.Linear(cfg.widths[-1], num_classes) if distillation else None
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = run_trunk(self, x, [getattr(self, f"norm{i}") for i in (0, 2, 4, 6)] if self.fork_feat else None)
        if self.fork_feat:
            return x
        x = self.norm(x).flatten(2).mean(-1)
        if self.dist_head is None:
            return self.head(x)
        if self.training:
            return self.head(x), self.dist_head(x)
        return (self.head(x) + self.dist_head(x)) / 2

    @torch.no_grad()
    def fuse(self) -> DeployTinyViM:
        return DeployTinyViM(self)


def run_trunk(model: nn.Module, x, out_norms: list[nn.Module] | None):
    """Stem and stages. With out_norms (backbone), the four stage outputs through their
    norms as a tuple; otherwise the last stage's map."""
    check_input_size(*x.shape[2:])
    x = model.patch_embed(x)
    outs = []
    for idx, block in enumerate(model.network):
        x = block(x)
        if out_norms is not None and idx % 2 == 0:
            outs.append(out_norms[idx // 2](x))
    return tuple(outs) if out_norms is not None else x


def _fuse_tree(module: nn.Module) -> nn.Module:
    """Ask each block to fuse itself; recurse into plain containers."""
    if hasattr(module, "fuse") and not isinstance(module, TinyViM):
        return module.fuse()
    for name, child in list(module.named_children()):
        setattr(module, name, _fuse_tree(child))
    return module


class DeployTinyViM(nn.Module):
    """The re-parameterized TinyViM: convolutions with biases, no BatchNorm, one head."""

    def __init__(self, src: TinyViM):
        super().__init__()
        src = copy.deepcopy(src)   # _fuse_tree rewrites containers in place: never touch the caller's model
        self.variant, self.fork_feat = src.variant, src.fork_feat
        self.patch_embed = _fuse_tree(src.patch_embed)
        self.network = nn.ModuleList([_fuse_tree(m) for m in src.network])
        if src.fork_feat:
            self.norms = nn.ModuleList([Affine2d.from_bn(getattr(src, f"norm{i}")) for i in (0, 2, 4, 6)])
        else:
            self.head = self._fused_head(src)

    @staticmethod
    @torch.no_grad()
    def _fused_head(src: TinyViM) -> nn.Linear:
        """norm (BN) -> mean -> (head + dist_head)/2 as one Linear: the BN is per channel
        and commutes with the spatial mean, the two heads average linearly."""
        heads = [src.head] + ([src.dist_head] if src.dist_head is not None else [])
        weight = sum(h.weight for h in heads) / len(heads)
        bias = sum(h.bias for h in heads) / len(heads)
        bn = src.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
        head.weight.data.copy_(weight * scale)
        head.bias.data.copy_(bias + weight @ shift)
        return head

    def forward(self, x):
        x = run_trunk(self, x, list(self.norms) if self.fork_feat else None)
        return x if self.fork_feat else self.head(x.flatten(2).mean(-1))
