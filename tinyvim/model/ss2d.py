"""SS2D, the Laplace mixer's scan branch, and the TViM block (TinyViM, arXiv 2411.17473)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinyvim.model.layers import FFN, Conv2d_BN, Rep_Inception, RepDW, Residual
from tinyvim.ops import cross_selective_scan
from tinyvim.ops.scan import compute_dtype

FREQUENCY_RAMP = (0.25, 0.5, 0.5, 0.75)   # share of channels sent to the scan, per stage
D_STATE = 8
K_DIRECTIONS = 4


def pool_factor(stage: int) -> int:
    """Laplacian-pyramid pooling before the scan: 8, 4, 2 in stages 0-2, none in stage 3."""
    return 2 ** (3 - stage) if stage < 3 else 1


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) map, written with reductions over
    dim 1 rather than two transposes: 7×7 transposes are among ONNX Runtime's slowest
    nodes here. Parameters are LayerNorm's (`weight`, `bias`)."""

    def forward(self, x):
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x   # statistics in fp32 under fp16
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(1, keepdim=True)
        y = centred * torch.rsqrt(var + self.eps)
        y = y * self.weight.to(x.dtype).reshape(1, -1, 1, 1) + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return y.to(dtype)


class SS2D(nn.Module):
    """Scan branch of the Laplace mixer for stage `stage` (0-3) with width `d_model`."""

    def __init__(self, d_model: int, stage: int, d_state: int = D_STATE):
        super().__init__()
        self.d_model = d_model
        self.stage = stage
        self.d_state = d_state
        self.d_inner = int(d_model * FREQUENCY_RAMP[stage])
        self.dt_rank = math.ceil(d_model / 16)
        self.pool = pool_factor(stage)
        di, r, n, k = self.d_inner, self.dt_rank, d_state, K_DIRECTIONS

        self.in_proj = Conv2d_BN(d_model, d_model)
        self.conv2d = Rep_Inception(d_model, 7)
        self.local_conv = RepDW(d_model - di)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * di, 1))
        self.Ds = nn.Parameter(torch.ones(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = Conv2d_BN(d_model, d_model)
        self._init_scan_parameters()

    @torch.no_grad()
    def _init_scan_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1):
        """Mamba's initialisation: dt spread log-uniformly in [dt_min, dt_max]."""
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus

    def _split_low_high(self, x):
        x_low, x_high = torch.split(x, (self.d_inner, self.d_model - self.d_inner), dim=1)
        return x_low, x_high

    def _scan_inputs(self, x_low):
        """delta (B,4D,h,w), Bs, Cs (B,4,N,h,w): the per-direction projections, computed
        on the natural layout (1×1 convs; they act per position so order does not matter)."""
        b, di, h, w = x_low.shape
        k, r, n = K_DIRECTIONS, self.dt_rank, self.d_state
        x_dbl = F.conv2d(x_low, self.x_proj_weight.reshape(k * (r + 2 * n), di, 1, 1))
        x_dbl = x_dbl.reshape(b, k, r + 2 * n, h, w)
        dts, Bs, Cs = torch.split(x_dbl, (r, n, n), dim=2)
        delta = F.conv2d(dts.reshape(b, k * r, h, w), self.dt_projs_weight.reshape(k * di, r, 1, 1), groups=k)
        return delta, Bs, Cs

    def forward(self, x):
        H, W = x.shape[2:]
        x = self.act(self.conv2d(self.in_proj(x)))
        x_low, x_high = self._split_low_high(x)
        x_high = self.local_conv(x_high)
        if self.pool > 1:
            x0 = x_low
            x_low = F.avg_pool2d(x_low, self.pool)
            residual = x0 - F.interpolate(x_low, size=(H, W), mode="nearest")
        delta, Bs, Cs = self._scan_inputs(x_low)
        ct = compute_dtype(x_low.dtype)
        y = cross_selective_scan(x_low, delta, Bs, Cs, -torch.exp(self.A_logs.to(ct)),
                                 self.Ds.to(ct), self.dt_projs_bias.to(ct).reshape(-1))
        y = self.out_norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.pool > 1:
            y = F.interpolate(y, scale_factor=self.pool, mode="bilinear", align_corners=False) + residual
        return self.out_proj(torch.cat([y, x_high], dim=1))

    @torch.no_grad()
    def fuse(self) -> DeploySS2D:
        return DeploySS2D(self)


class DeploySS2D(nn.Module):
    """SS2D with every linear piece folded: in_proj and out_proj with their BNs, the two
    axial Rep convs as one depthwise conv, the local RepDW as one conv, the four
    directions' x_proj as one 1×1 conv and their dt_proj as one grouped 1×1 conv."""

    def __init__(self, src: SS2D):
        super().__init__()
        self.d_model, self.d_inner, self.d_state, self.pool = src.d_model, src.d_inner, src.d_state, src.pool
        di, r, n, k = src.d_inner, src.dt_rank, src.d_state, K_DIRECTIONS
        self.in_proj = src.in_proj.fuse()
        self.conv2d = src.conv2d.fuse()
        self.local_conv = src.local_conv.fuse()
        self.out_proj = src.out_proj.fuse()
        # x_proj as one 1×1 conv producing [dt (4R) | Bs (4N) | Cs (4N)], dt_proj as a grouped
        # 1×1 conv. Composing the two into one D->4D conv would save a node but multiply
        # the parameters (D×D instead of 2×D×R per direction), so they stay apart.
        xw = src.x_proj_weight.detach()
        weight = torch.cat([xw[:, :r].reshape(k * r, di), xw[:, r:r + n].reshape(k * n, di),
                            xw[:, r + n:].reshape(k * n, di)])
        self.x_proj = nn.Conv2d(di, k * (r + 2 * n), 1, bias=False).to(xw.dtype)
        self.x_proj.weight.data.copy_(weight.reshape(-1, di, 1, 1))
        self.dt_proj = nn.Conv2d(k * r, k * di, 1, groups=k, bias=False).to(xw.dtype)
        self.dt_proj.weight.data.copy_(src.dt_projs_weight.detach().reshape(k * di, r, 1, 1))
        self.dt_rank = r
        # kept in the source dtype: the scan itself upcasts to float32 (float64 stays float64)
        self.register_buffer("A", -torch.exp(src.A_logs.detach()))
        self.register_buffer("Ds", src.Ds.detach().clone())
        self.register_buffer("delta_bias", src.dt_projs_bias.detach().reshape(-1).clone())
        self.out_norm = ChannelLayerNorm(di, eps=src.out_norm.eps).to(xw.dtype)
        self.out_norm.load_state_dict(src.out_norm.state_dict())

    def forward(self, x):
        x = F.silu(self.conv2d(self.in_proj(x)))
        x_low, x_high = torch.split(x, (self.d_inner, self.d_model - self.d_inner), dim=1)
        x_high = self.local_conv(x_high)
        if self.pool > 1:
            x0 = x_low
            x_low = F.avg_pool2d(x_low, self.pool)
            residual = x0 - F.interpolate(x_low, scale_factor=self.pool, mode="nearest")
        b, di, h, w = x_low.shape
        k, n, r = K_DIRECTIONS, self.d_state, self.dt_rank
        dts, Bs, Cs = torch.split(self.x_proj(x_low), (k * r, k * n, k * n), dim=1)
        delta = self.dt_proj(dts)
        y = cross_selective_scan(x_low, delta, Bs.reshape(b, k, n, h, w), Cs.reshape(b, k, n, h, w),
                                 self.A, self.Ds, self.delta_bias)
        y = self.out_norm(y)
        if self.pool > 1:
            y = F.interpolate(y, scale_factor=self.pool, mode="bilinear", align_corners=False) + residual
        return self.out_proj(torch.cat([y, x_high], dim=1))


class TViMBlock(nn.Module):
    """x + op(x), then x + mlp(x); no norm, no layer scale."""

    def __init__(self, dim: int, stage: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.op = SS2D(dim, stage)
        self.mlp = FFN(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.op(x)
        return x + self.mlp(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        return nn.Sequential(Residual(self.op.fuse()), Residual(self.mlp.fuse()))
