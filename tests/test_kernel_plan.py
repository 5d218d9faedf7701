"""Every branch of the launcher's plan, and every SS2D scan TinyViM runs, through the kernel's own
source on the CPU (tests/cuda_on_cpu).

The cases are derived from the plan (cuda_on_cpu.plan: its rules restated, its branches listed,
the cheapest candidate shapes kept until every branch is reached): 32/64/128-thread blocks, the
halving that keeps the accumulator in 48 KiB of shared memory, the halving to 32 that still needs
the global workspace, sequence lengths below, at an exact multiple of and between staging chunks,
N padded or not, full or partial channel blocks. Each must equal the CPU twin bit for bit, match
the float64 reference within cases.REF_TOL on the channels at block boundaries, and take the plan
restated in plan.make_plan (block size, shared memory and workspace seen by the runtime).

Then every distinct SS2D scan shape of TinyViM-S/B/L at 224, 256, 384 and 512 (batch 1; batches 2
and 8 too at 224, the dynamic-batch profile), the same way.
"""
from __future__ import annotations

import numpy as np
import pytest
from cuda_on_cpu import build, cases, device, plan

from tinyvim.model import create_model
from tinyvim.model.complexity import ss2d_table
from tinyvim.ops.reference import random_scan_inputs

DERIVED = plan.derived_cases()
MODEL_SIZES = (224, 256, 384, 512)
PROFILE_BATCHES = (1, 2, 8)


@pytest.fixture(scope="module")
def lib():
    return device.load_library(build.build_library())


def boundary_channels(d: int, block: int) -> tuple[int, ...]:
    """The channels where a block-indexing mistake shows first: the first block's first and last,
    the second block's first, the last channel (a partial block's end). Every other channel is
    checked bit for bit against the twin; the float64 reference is slow (plain loops)."""
    return tuple(sorted({c for c in (0, block - 1, block, d - 1) if 0 <= c < d}))


def run_and_check(lib, name: str, shape, dtype: str = "float32", ref_batches=None) -> dict:
    b, d = shape[:2]
    want = plan.make_plan(*shape)
    inp = random_scan_inputs(*shape, seed=sum(shape), dtype=np.float32)
    for k in ("x", "delta", "Bs", "Cs"):
        inp[k] = cases.rounded(inp[k], dtype)
    res = cases.check_inputs(lib, name, inp, dtype, ref_batches=ref_batches,
                             ref_channels=boundary_channels(d, want.block))
    assert res["problems"] == [], res
    seen = res["stats"]
    # the plan restated in plan.py is the plan the launch took
    assert (seen["max_block"], seen["max_smem"], res["workspace_bytes"]) == (want.block, want.smem, want.workspace), \
        (name, seen, want)
    assert seen["blocks"] == -(-d // want.block) * b and seen["divergent"] == 0 and seen["overruns"] == 0
    return res


def test_derived_cases_reach_every_branch_of_the_plan():
    covered = set().union(*(br for _, _, br in DERIVED))
    print(f"\nlaunch-plan branch coverage: {len(covered & plan.ALL_BRANCHES)}/{len(plan.ALL_BRANCHES)}")
    for branch in sorted(plan.ALL_BRANCHES):
        hits = [name for name, _, br in DERIVED if branch in br]
        print(f"  {branch:45s} {len(hits):2d}  {hits[0] if hits else '-'}")
    assert covered == plan.ALL_BRANCHES
    # every branch the model shapes take is one the planner has
    model = {s for v in "sbl" for size in MODEL_SIZES for s in plan.ss2d_shapes(v, size)}
    assert set().union(*(plan.branches((1, *s)) for s in model)) <= plan.ALL_BRANCHES


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name,shape", [(n, s) for n, s, _ in DERIVED], ids=[n for n, _, _ in DERIVED])
def test_every_plan_branch_matches_twin_and_reference(lib, name, shape, dtype):
    run_and_check(lib, name, shape, dtype)


def test_ss2d_shapes_are_the_models():
    """plan.ss2d_shapes (from the variant table) is what the model's own SS2D table says."""
    for variant, size in (("s", 224),):
        rows = ss2d_table(create_model(variant), (size, size))
        want = {(r["d_inner"], *map(int, r["scan_grid"].split("x")), r["d_state"]) for r in rows}
        assert set(plan.ss2d_shapes(variant, size)) == want


def model_jobs():
    """(name, shape) of every distinct SS2D scan of S/B/L at MODEL_SIZES, batch 1, plus batches 2
    and 8 at 224 (the dynamic-batch profile's opt and max)."""
    jobs = {}
    for variant in "sbl":
        for size in MODEL_SIZES:
            for d, h, w, n in plan.ss2d_shapes(variant, size):
                for b in PROFILE_BATCHES if size == 224 else (1,):
                    jobs.setdefault((b, d, h, w, n), f"{variant}{size}_d{d}_b{b}")
    return [(name, shape) for shape, name in jobs.items()]


def test_every_model_scan_shape_matches_twin_and_reference(lib):
    """One test for all the shapes (~40), float32: bit for bit against the twin on every element,
    against the float64 reference on the boundary channels of the first and last batch item."""
    seen_blocks = set()
    for name, shape in model_jobs():
        res = run_and_check(lib, name, shape, ref_batches=tuple(sorted({0, shape[0] - 1})))
        seen_blocks.add(res["stats"]["max_block"])
    assert seen_blocks == {32, 64, 128}   # the real models use all three block sizes
