"""The launcher's plan (make_plan in cross_scan_kernel.cu), restated from its rules, the branches it
can take, and cases derived from it so that every branch runs.

The restatement is independent of the C++ (written from the rules in its comments: 48 KiB of
dynamic shared memory, 8 KiB of B/C staging, an L x (CB+1) fp32 accumulator, the block of 32/64/128
that wastes the fewest lanes, halved while the accumulator does not fit, else the global
workspace); the tests compare it with what the launch really did (the runtime's counters: block
size, shared memory, and the workspace the ABI asks for), so a changed plan fails either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from tinyvim.model.ss2d import FREQUENCY_RAMP, pool_factor
from tinyvim.model.tinyvim import VARIANTS

SMEM_BUDGET = 48 * 1024
MAX_GRID_Y = 65535


def state_capacity(n: int) -> int:
    return 8 if 0 < n <= 8 else 16 if 8 < n <= 16 else 0


def bc_chunk(nt: int) -> int:
    """Steps of B/C staged per barrier pair (8 KiB for either capacity)."""
    return 256 // nt


@dataclass(frozen=True)
class Plan:
    nt: int               # state capacity
    first_block: int      # the block chosen for the fewest idle lanes
    block: int            # after halving to fit the accumulator
    acc_in_smem: bool
    smem: int
    workspace: int        # bytes of the global accumulator (0 when in shared memory)


def make_plan(b: int, d: int, h: int, w: int, n: int) -> Plan:
    nt = state_capacity(n)
    best = 32
    for cb in (64, 128):                    # ties go to the larger block
        if -(-d // cb) * cb <= -(-d // best) * best:
            best = cb
    L = h * w
    bc = bc_chunk(nt) * 8 * nt * 4

    def fits(cb: int) -> bool:
        return bc + L * (cb + 1) * 4 <= SMEM_BUDGET

    cb = best
    while cb > 32 and not fits(cb):
        cb //= 2
    in_smem = fits(cb)
    return Plan(nt, best, cb, in_smem, bc + (L * (cb + 1) * 4 if in_smem else 0), 0 if in_smem else b * d * L * 4)


def branches(shape: tuple[int, int, int, int, int]) -> set[str]:
    """The branches of the plan and of the kernel's loops that `shape` (B, D, H, W, N) takes."""
    b, d, h, w, n = shape
    p = make_plan(b, d, h, w, n)
    length, chunk = h * w, bc_chunk(p.nt)
    halvings = {64: 1, 128: 2}.get(p.first_block, 0) - {64: 1, 128: 2}.get(p.block, 0)
    out = {f"state capacity {p.nt}", "N padded to the capacity" if n < p.nt else "N = capacity",
           f"block {p.first_block} chosen", f"block {p.block} run", f"halved x{halvings}",
           "accumulator in shared memory" if p.acc_in_smem else "accumulator in the workspace",
           "partial last channel block" if d % p.block else "channel blocks full",
           "L < staging chunk" if length < chunk else "L an exact multiple of the chunk" if length % chunk == 0
           else "L > chunk, partial last chunk"}
    if halvings and p.acc_in_smem:
        out.add("halved, accumulator kept in shared memory")
    if halvings and not p.acc_in_smem:
        out.add("halved to 32, accumulator in the workspace")
    if b > MAX_GRID_Y:
        out.add("batch sliced over gridDim.y")
    return out


#: every branch the plan has (a test asserts the derived cases reach each one)
ALL_BRANCHES = frozenset({
    "state capacity 8", "state capacity 16", "N padded to the capacity", "N = capacity",
    "block 32 chosen", "block 64 chosen", "block 128 chosen", "block 32 run", "block 64 run", "block 128 run",
    "halved x0", "halved x1", "halved x2", "accumulator in shared memory", "accumulator in the workspace",
    "halved, accumulator kept in shared memory", "halved to 32, accumulator in the workspace",
    "partial last channel block", "channel blocks full",
    "L < staging chunk", "L an exact multiple of the chunk", "L > chunk, partial last chunk",
})

# Candidate shapes the cases are derived from: channel counts around each block size's waste
# boundaries, maps with L below, at exact multiples of and between staging chunks (16 or 32 steps)
# and around the 48 KiB fit of each block size, non-square where possible.
_D = (5, 13, 32, 48, 64, 70, 100, 128, 160, 256)
_HW = ((3, 4), (4, 4), (4, 8), (8, 4), (5, 7), (6, 8), (8, 12), (9, 13), (12, 16), (16, 20))
_N = (5, 8, 13, 16)


def derived_cases(batch: int = 2) -> list[tuple[str, tuple[int, int, int, int, int], frozenset]]:
    """(name, shape, branches) covering ALL_BRANCHES: candidates taken cheapest first (B*D*L*N), each
    kept when it reaches a branch none of the kept ones did (greedy set cover). batch 2: two batch
    items' blocks run interleaved (a workspace or output offset shared between them shows)."""
    cands = sorted(((batch, d, h, w, n) for d, (h, w), n in product(_D, _HW, _N)),
                   key=lambda s: (s[0] * s[1] * s[2] * s[3] * s[4], s))
    covered: set[str] = set()
    out = []
    for s in cands:
        new = branches(s) - covered
        if new:
            covered |= new
            out.append((f"plan_{s[1]}ch_{s[2]}x{s[3]}_n{s[4]}", s, frozenset(branches(s))))
    return out


def ss2d_shapes(variant: str, img: int) -> list[tuple[int, int, int, int]]:
    """(D, H, W, N) of each distinct SS2D scan of `variant` at img x img: D = the stage's width x its
    frequency share, the map img / (4 * 2^stage) / pool (= img / 32 in every stage), N = 8."""
    cfg = VARIANTS[variant]
    shapes = []
    for stage, width in enumerate(cfg.widths):
        side = img // (4 * 2 ** stage) // pool_factor(stage)
        shape = (int(width * FREQUENCY_RAMP[stage]), side, side, 8)
        if shape not in shapes:
            shapes.append(shape)
    return shapes
