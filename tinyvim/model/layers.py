"""Convolutional building blocks of TinyViM, each able to fuse itself for deployment.

Module and parameter names follow the official release (TinyViM, arXiv 2411.17473): they are the
state-dict keys of the official checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Fold an eval-mode BatchNorm that follows a conv into the conv's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = (bias - bn.running_mean) * scale + bn.bias
    return w, b


def conv_from(weight: torch.Tensor, bias: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with `like`'s geometry and the given weight/bias."""
    conv = nn.Conv2d(like.in_channels, like.out_channels, like.kernel_size, like.stride,
                     like.padding, like.dilation, like.groups, bias=True).to(weight.dtype)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


class Conv2d_BN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; keys `c.weight`, `bn.*`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size=1, stride=1, padding=0, groups=1,
                 bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = fuse_conv_bn(self.c.weight, None, self.bn)
        return conv_from(w, b, self.c)


def _centre_pad(kernel: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Zero-pad a (C, 1, h, w) kernel to (C, 1, kh, kw), centred."""
    ph, pw = (kh - kernel.shape[2]) // 2, (kw - kernel.shape[3]) // 2
    return F.pad(kernel, (pw, kw - kernel.shape[3] - pw, ph, kh - kernel.shape[2] - ph))


class _RepDepthwise(nn.Module):
    """bn(conv(x) + conv1(x) + x) with a depthwise k×k Conv2d_BN and a depthwise 1×1 conv."""

    def __init__(self, dim: int, kernel_size, padding):
        super().__init__()
        self.conv = Conv2d_BN(dim, dim, kernel_size, 1, padding, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=dim, bias=True)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.bn(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent single depthwise kernel (C, 1, kh, kw) and bias (C)."""
        w, b = fuse_conv_bn(self.conv.c.weight, None, self.conv.bn)
        kh, kw = w.shape[2:]
        identity = torch.ones_like(self.conv1.weight)
        w = w + _centre_pad(self.conv1.weight, kh, kw) + _centre_pad(identity, kh, kw)
        b = b + self.conv1.bias
        return fuse_conv_bn(w, b, self.bn)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = self.fused_kernel()
        return conv_from(w, b, self.conv.c)


class RepDW(_RepDepthwise):
    """Re-parameterizable 3×3 depthwise conv."""

    def __init__(self, dim: int):
        super().__init__(dim, 3, 1)


class RepDW_Axias(_RepDepthwise):
    """Re-parameterizable axial depthwise conv, kernel (1, k) or (k, 1)."""

    def __init__(self, dim: int, kernel):
        kh, kw = kernel
        super().__init__(dim, kernel, (kh // 2, kw // 2))


class Rep_Inception(nn.Module):
    """Channels split (dim - g, g): the first part through a (k, 1) axial conv, the rest (1, k)."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        g = int(dim * 0.5)
        self.split = (dim - g, g)
        self.dwconv_w = RepDW_Axias(dim - g, (kernel_size, 1))
        self.dwconv_h = RepDW_Axias(g, (1, kernel_size))

    def forward(self, x):
        a, b = torch.split(x, self.split, dim=1)
        return torch.cat([self.dwconv_w(a), self.dwconv_h(b)], dim=1)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One k×k depthwise conv holding both axial kernels: no split/concat at run time
        (costs 6k extra MACs per pixel on a tiny depthwise layer, saves two graph nodes
        and a copy)."""
        wa, ba = self.dwconv_w.fused_kernel()
        wb, bb = self.dwconv_h.fused_kernel()
        k = max(wa.shape[2], wb.shape[3])
        w = torch.cat([_centre_pad(wa, k, k), _centre_pad(wb, k, k)], dim=0)
        dim = w.shape[0]
        conv = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim, bias=True).to(w.dtype)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(torch.cat([ba, bb]))
        return conv


class FFN(nn.Module):
    """fc1 (1×1 Conv2d_BN) -> GELU -> fc2 (1×1 Conv2d_BN)."""

    def __init__(self, in_ch: int, hidden: int):
        super().__init__()
        self.fc1 = Conv2d_BN(in_ch, hidden)
        self.act = nn.GELU()
        self.fc2 = Conv2d_BN(hidden, in_ch)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def fuse(self, out_scale: torch.Tensor | None = None) -> nn.Sequential:
        """conv-GELU-conv; `out_scale` (C,) folds a following per-channel scale into fc2."""
        fc2 = self.fc2.fuse()
        if out_scale is not None:
            fc2.weight.mul_(out_scale.reshape(-1, 1, 1, 1))
            fc2.bias.mul_(out_scale.reshape(-1))
        return nn.Sequential(self.fc1.fuse(), nn.GELU(), fc2)


class Residual(nn.Module):
    """x + fn(x)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        y = self.fn(x)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return x + y
        # fn's output is a fresh temporary: adding in place saves allocating (and page-
        # faulting) a full feature map per block in eager inference.
        return y.add_(x)


class LocalBlock(nn.Module):
    """x + layer_scale * mlp(dwconv(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-5):
        super().__init__()
        self.dwconv = RepDW(dim)
        self.mlp = FFN(dim, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x):
        return x + self.layer_scale * self.mlp(self.dwconv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        mlp = self.mlp.fuse(out_scale=self.layer_scale.reshape(-1))
        return Residual(nn.Sequential(self.dwconv.fuse(), *mlp))


class Affine2d(nn.Module):
    """Per-channel y = x * scale + shift: what an eval BatchNorm becomes when it has no
    conv to fold into (the backbone's output norms)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x):
        return x * self.scale + self.shift

    @classmethod
    @torch.no_grad()
    def from_bn(cls, bn: nn.BatchNorm2d) -> Affine2d:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return cls(scale, bn.bias - bn.running_mean * scale)
