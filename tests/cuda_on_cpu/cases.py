"""The check cases of the kernel on the CPU and check_case: the kernel library against the CPU twin
(bit for bit) and the float64 reference (within REF_TOL)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins.cpu_twin import cross_selective_scan_cpu

from .device import cross_selective_scan_on_cpu, stats
from .plan import derived_cases, make_plan
from .storage import DTYPES, from_storage, rounded, to_storage


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int, int]          # B, D, H, W, N
    why: str
    #: batch items checked against the (slow, plain-loop) float64 reference; None: all. Every
    #: item is always checked bit for bit against the CPU twin.
    ref_batches: tuple[int, ...] | None = None


#: What each case exercises in the kernel and its launcher. Non-square maps (a transposed h/w is
#: invisible on a square one), N below the capacity (zero padding), several channel blocks with a
#: partial last one, sequences longer than one B/C staging chunk (so a missing barrier between
#: chunks shows), the global-workspace accumulator with B >= 2 (a lost batch offset shows when
#: blocks of different batch items run at once), and a batch above gridDim.y's 65535.
CASES = (
    Case("nonsquare_3x4_n8", (1, 5, 3, 4, 8), "L < one staging chunk, one partial channel block"),
    Case("nonsquare_7x5_n16_b3", (3, 13, 7, 5, 16), "N = 16: 3 staging chunks of 16 steps"),
    Case("square_7x7_n5", (2, 12, 7, 7, 5), "N = 5 zero-padded to 8, the model's 7x7 grid"),
    Case("nonsquare_5x9_n13", (2, 7, 5, 9, 13), "N = 13 zero-padded to 16"),
    Case("channels_70_6x5", (2, 70, 6, 5, 8), "3 channel blocks of 32, the last partial"),
    Case("workspace_20x17_b2", (2, 5, 20, 17, 8), "L = 340: accumulator in the global workspace"),
    Case("workspace_17x19_b3_n16", (3, 33, 17, 19, 16), "workspace, 2 channel blocks (d0 > 0), N = 16",
         ref_batches=(2,)),
    Case("batch_65537", (65537, 1, 1, 3, 5), "two launches: gridDim.y is at most 65535",
         ref_batches=(0, 1, 65534, 65535, 65536)),
)
#: Tolerance against the float64 reference of the same (dtype-rounded) inputs, relative to max|y|:
#:  * float32: the kernel computes in float32 throughout; the error is float32 rounding accumulated
#:    over the recurrence and the 4-direction sum, measured ~1e-7 on these cases (and <= 2e-6 over
#:    the wide input ranges of test_kernel_ranges). 1e-5 leaves room for longer sequences while a
#:    wrong index (a neighbour's value read instead) gives errors of order 1e-2..1 (test_kernel_ranges
#:    pins one such swap far above every tolerance here).
#:  * float16 / bfloat16: the same float32 arithmetic (inputs are rounded before the reference sees
#:    them, so input rounding is not error), plus the rounding of the output to the 16-bit type:
#:    half an ulp relative to the element, at most 2^-11 (float16, 11-bit significand) or 2^-8
#:    (bfloat16, 8-bit significand) of max|y|.
#: the plan's branches (plan.derived_cases), batch 2, as cases: the mutation test runs them after CASES
PLAN_CASES = tuple(Case(name, shape, "launch-plan branches: " + ", ".join(sorted(br)))
                   for name, shape, br in derived_cases())
REF_TOL = {"float32": 1e-5, "float16": 1e-5 + 2.0 ** -11, "bfloat16": 1e-5 + 2.0 ** -8}


def case_inputs(case: Case, dtype: str) -> dict[str, np.ndarray]:
    """The case's random inputs, x/delta/Bs/Cs rounded to `dtype` (as float32), A/Ds/bias float32."""
    inp = random_scan_inputs(*case.shape, seed=sum(case.shape[1:]), dtype=np.float32)
    for k in ("x", "delta", "Bs", "Cs"):
        inp[k] = rounded(inp[k], dtype)
    return inp


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref|."""
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def reference_subset(inp: dict[str, np.ndarray], batches=None, channels=None) -> np.ndarray:
    """The float64 reference for the batch items `batches` and channels `channels` only (None: all):
    channels are independent in the scan, so slicing the inputs (the rows c = k*D + d of every
    direction k for the per-channel parameters) gives the same values as slicing the full result."""
    d = inp["x"].shape[1]
    bsel = list(batches) if batches is not None else slice(None)
    ch = np.asarray(channels if channels is not None else range(d))
    rows = np.concatenate([k * d + ch for k in range(4)])
    return cross_selective_scan_reference(
        x=inp["x"][bsel][:, ch], delta=inp["delta"][bsel][:, rows], Bs=inp["Bs"][bsel], Cs=inp["Cs"][bsel],
        A=inp["A"][rows], Ds=inp["Ds"][rows], delta_bias=inp["delta_bias"][rows])


def check_inputs(lib: ctypes.CDLL, name: str, inp: dict[str, np.ndarray], dtype: str, reference: bool = True,
                 ref_batches: tuple[int, ...] | None = None, ref_channels: tuple[int, ...] | None = None) -> dict:
    """Runs the kernel library on `inp` (x/delta/Bs/Cs already rounded to `dtype`); compares it bit
    for bit with the CPU twin (same arithmetic header, same summation order; fed the same rounded
    inputs, its float32 output rounded to `dtype` by numpy) and, with `reference`, with the float64
    reference within REF_TOL. Returns the figures and `problems` (empty when the case passes)."""
    lib.tinyvim_cuda_on_cpu_reset_stats()
    status, y = cross_selective_scan_on_cpu(lib, **inp, dtype=dtype)
    seen = stats(lib)
    b, d, h, w = inp["x"].shape
    n = inp["A"].shape[1]
    out = {"case": name, "dtype": dtype, "status": status, "stats": seen,
           "workspace_bytes": int(lib.tinyvim_cross_scan_cuda_workspace_size(b, d, h, w, n, DTYPES[dtype])),
           "problems": []}
    if status != 0:
        out["problems"].append(f"status {status} ({lib.tinyvim_cross_scan_cuda_error_string(status).decode()})")
        return out
    if seen["overruns"]:
        out["problems"].append(f"{seen['overruns']} blocks wrote past their dynamic shared memory")
    want = make_plan(b, d, h, w, n)
    took = (seen["max_block"], seen["max_smem"], out["workspace_bytes"])
    if took != (want.block, want.smem, want.workspace):
        out["problems"].append(f"plan (block, smem, workspace) {took} is not the planner's rules' "
                               f"{(want.block, want.smem, want.workspace)} (plan.make_plan)")
    twin = to_storage(cross_selective_scan_cpu(**inp), dtype)
    got = from_storage(y, dtype)
    out["bits_equal_twin"] = bool(np.array_equal(y.view(np.uint8), twin.view(np.uint8)))
    out["err_twin"] = rel_error(got, from_storage(twin, dtype))
    if not out["bits_equal_twin"]:
        out["problems"].append(f"differs from the CPU twin (max rel {out['err_twin']:.3g})")
    if reference:
        sel = list(ref_batches) if ref_batches else slice(None)
        ref = reference_subset(inp, ref_batches, ref_channels)
        got_sel = got[sel] if ref_channels is None else got[sel][:, list(ref_channels)]
        out["err_ref"] = rel_error(got_sel, ref)
        if not out["err_ref"] <= REF_TOL[dtype]:
            out["problems"].append(f"error vs float64 reference {out['err_ref']:.3g} > {REF_TOL[dtype]:.3g}")
    return out


def check_case(lib: ctypes.CDLL, case: Case, dtype: str, reference: bool = True) -> dict:
    """check_inputs on the case's random inputs."""
    return check_inputs(lib, case.name, case_inputs(case, dtype), dtype, reference, case.ref_batches)


def check_suite(lib: ctypes.CDLL, reference: bool = True, fail_fast: bool = False):
    """check_case for every case of CASES x dtype, then of PLAN_CASES in float32; yields each result
    (stops after the first failing one with fail_fast)."""
    for case, dtypes in [*((c, DTYPES) for c in CASES), *((c, ("float32",)) for c in PLAN_CASES)]:
        for dtype in dtypes:
            res = check_case(lib, case, dtype, reference)
            yield res
            if fail_fast and res["problems"]:
                return
