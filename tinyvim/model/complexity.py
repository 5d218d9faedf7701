"""Parameters, multiply-accumulates and the SS2D layout of a TinyViM variant."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from tinyvim.contract import DEFAULT_IMG_SIZE
from tinyvim.model.ss2d import K_DIRECTIONS, SS2D
from tinyvim.model.tinyvim import TinyViM, check_input_size

# MACs per (direction, channel, state, step) of the scan: exp(dt*A)*h, dt*B*u into h, C·h.
# The exp/softplus are not multiply-accumulates and are not counted, as fvcore does not.
SCAN_MACS_PER_ELEMENT = 3


@register_flop_formula(torch.ops.tinyvim.cross_selective_scan)
def _scan_flops(x_shape, delta_shape, bs_shape, *args, **kwargs) -> int:
    b, d, h, w = x_shape
    n = bs_shape[2]
    return 2 * SCAN_MACS_PER_ELEMENT * b * K_DIRECTIONS * d * n * h * w   # flops = 2 × MACs


def count_macs(model: torch.nn.Module, img_size: tuple[int, int] = DEFAULT_IMG_SIZE) -> int:
    """MACs for one image: convolutions, linear layers and the scan (counted explicitly
    through its registered formula). Elementwise ops, norms and pooling are not counted."""
    check_input_size(*img_size)
    x = torch.zeros(1, 3, *img_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


@dataclass
class SS2DInfo:
    block: str        # module path, e.g. network.4.4.op
    stage: int        # 1-based
    d_model: int
    d_inner: int
    pool: int
    scan_grid: str    # h×w the scan runs on
    scan_length: int
    d_state: int
    dt_rank: int


def ss2d_table(model: TinyViM, img_size: tuple[int, int] = DEFAULT_IMG_SIZE) -> list[dict]:
    """One row per SS2D block: where it sits and the shape of its scan."""
    check_input_size(*img_size)
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, SS2D):
            stride = 4 * 2 ** mod.stage
            h, w = img_size[0] // stride // mod.pool, img_size[1] // stride // mod.pool
            rows.append(asdict(SS2DInfo(name, mod.stage + 1, mod.d_model, mod.d_inner, mod.pool,
                                        f"{h}x{w}", h * w, mod.d_state, mod.dt_rank)))
    return rows
