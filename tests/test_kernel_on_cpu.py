"""The CUDA kernel's own source on the CPU: cross_scan_kernel.cuh and the launcher + C ABI of
cross_scan_kernel.cu, unmodified, compiled with g++ on our CUDA-on-CPU runtime (tests/cuda_on_cpu),
called through tinyvim_cross_scan_cuda on guard-paged host buffers.

Every case of cases.CASES (non-square maps, N padded to the state capacity, several channel
blocks, the global-workspace accumulator with B >= 2, a batch above gridDim.y's limit) in float32,
float16 and bfloat16 must
  * equal the CPU twin bit for bit (same arithmetic header, same summation order, same libm here;
    the twin's float32 output rounded to the 16-bit type by numpy, an implementation independent
    of the runtime's), and
  * match the float64 reference of the same inputs within cases.REF_TOL (float32 arithmetic,
    1e-5 of max|y|, plus half an ulp of the 16-bit output type), and
  * take the path the case is for (workspace or not, the number of launches), without a
    shared-memory overrun or a divergent barrier.
What this cannot see (nvcc's code generation, warp scheduling, speed): docs/kernel-checks.md;
tests/test_kernel_on_cpu_mutants.py shows that these checks catch real bugs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from cuda_on_cpu import build, cases, device, rewrite, storage

from tinyvim.plugins.cpu_twin import cache_dir
from tinyvim.plugins.errors import PluginError


@pytest.fixture(scope="module")
def lib():
    return device.load_library(build.build_library())


@pytest.mark.parametrize("dtype", list(storage.DTYPES))
@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_kernel_source_on_cpu_matches_twin_and_reference(lib, case, dtype):
    res = cases.check_case(lib, case, dtype)
    assert res["problems"] == [], res
    assert res["bits_equal_twin"] and res["err_twin"] == 0.0
    assert res["err_ref"] <= cases.REF_TOL[dtype]
    b, d, h, w, n = case.shape
    seen = res["stats"]
    # the path the case exists for was the one taken
    assert (res["workspace_bytes"] > 0) == case.name.startswith("workspace"), res["workspace_bytes"]
    assert seen["launches"] == (2 if b > 65535 else 1)
    assert seen["max_grid_y"] == min(b, 65535) and seen["overruns"] == 0 and seen["refused"] == 0
    assert seen["divergent"] == 0
    assert seen["blocks"] == seen["max_grid_x"] * b     # every (channel block, batch item) ran once


def test_sixteen_bit_outputs_are_not_float32_in_disguise(lib):
    """Guards the bit-for-bit comparison against a vacuous pass: the 16-bit outputs do differ from
    the float32 run (by rounding), yet equal the twin rounded the same way."""
    case = cases.CASES[1]
    inp = cases.case_inputs(case, "float32")
    _, y32 = device.cross_selective_scan_on_cpu(lib, **inp, dtype="float32")
    for dtype in ("float16", "bfloat16"):
        _, y = device.cross_selective_scan_on_cpu(lib, **inp, dtype=dtype)
        got = storage.from_storage(y, dtype)
        assert not np.array_equal(got, y32)
        assert np.abs(got - y32).max() <= np.abs(y32).max() * (2.0 ** -8 if dtype == "bfloat16" else 2.0 ** -11)


def test_bfloat16_rounding_helper_matches_torch():
    """to_bf16_bits (numpy) rounds the twin's output for the bfloat16 comparison: it must be the
    rounding torch (and CUDA's __float2bfloat16_rn) does, ties to even and NaN included."""
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                           np.array([1.00390625, 1.01171875, -1.00390625, 3.3895314e38, 1e-40, 0.0, -0.0,
                                     np.inf, -np.inf], np.float32)])
    want = torch.from_numpy(vals).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(storage.to_bf16_bits(vals), want)
    assert storage.to_bf16_bits(np.array([np.nan], np.float32))[0] == 0x7FFF
    assert np.array_equal(storage.bf16_bits_to_float32(want), torch.from_numpy(vals).to(torch.bfloat16).float().numpy())


def test_abi_errors_are_cuda_codes(lib):
    """The launcher's own refusals come back as the cudaError_t values the ABI documents."""
    inp = cases.case_inputs(cases.CASES[5], "float32")             # needs a workspace
    rc, _ = device.cross_selective_scan_on_cpu(lib, **inp, workspace_bytes=16)
    assert rc == 1 and lib.tinyvim_cross_scan_cuda_error_string(rc) == b"invalid argument"
    small = {k: v for k, v in cases.case_inputs(cases.CASES[0], "float32").items()}
    n = 17
    small["Bs"] = small["Cs"] = np.zeros((1, 4, n, 3, 4), np.float32)
    small["A"] = np.zeros((20, n), np.float32)
    rc, _ = device.cross_selective_scan_on_cpu(lib, **small)
    assert rc == 801 and lib.tinyvim_cross_scan_cuda_error_string(rc) == b"operation not supported"
    assert lib.tinyvim_cross_scan_cuda_error_string(700) == b"an illegal memory access was encountered"


def test_launch_receives_the_callers_stream(lib):
    """The stream handed to the C ABI reaches the launch (recorded by the runtime)."""
    lib.tinyvim_cuda_on_cpu_reset_stats()
    inp = cases.case_inputs(cases.CASES[0], "float32")
    rc, _ = device.cross_selective_scan_on_cpu(lib, **inp, stream=0x5EED)
    assert rc == 0 and device.stats(lib)["last_stream"] == 0x5EED


def test_build_is_cached(lib):
    """A second build of unchanged sources is a lookup (the fixture built or found the library)."""
    first = build.build_library()
    mtime = first.stat().st_mtime_ns
    assert build.build_library() == first and first.stat().st_mtime_ns == mtime
    assert first.name.startswith("libtinyvim_scan_cuda_on_cpu-") and first.parent == cache_dir()


# --------------------------------------------------------------------------- the generated rewrite
def test_rewrite_turns_every_launch_into_a_runtime_call():
    src = """
    // a comment mentioning k<<<1, 1>>>() is left alone
    k<NT, T><<<dim3(bx, nb), plan.cb, plan.smem, stream>>>(
        a + f(b, c),   // (parentheses) inside
        d);
    ns::g<<<1, 32>>>();
    """
    out, n = rewrite.rewrite_launches(src)
    assert n == 2
    assert ("::tinyvim_cuda_on_cpu::launch(k<NT, T>, ::tinyvim_cuda_on_cpu::LaunchConfig("
            "dim3(bx, nb), plan.cb, plan.smem, stream),\n        a + f(b, c),") in out
    assert "::tinyvim_cuda_on_cpu::launch(ns::g, ::tinyvim_cuda_on_cpu::LaunchConfig(1, 32));" in out
    assert "k<<<1, 1>>>()" in out                                      # the comment
    assert out.count("\n") == src.count("\n")                          # line numbers kept
    with pytest.raises(PluginError, match="without `>>>`"):
        rewrite.rewrite_launches("k<<<1, 1(x);")


def test_extern_shared_array_is_found_in_its_namespace():
    src = "namespace a {\nnamespace b {\nvoid f() {\n  if (x) { }\n  extern __shared__ float smem[];\n}\n}\n}\n"
    assert rewrite.extern_shared_arrays(src) == [(["a", "b"], "float", "smem")]
    with pytest.raises(PluginError, match="anonymous namespace"):
        rewrite.extern_shared_arrays("namespace {\nvoid f() { extern __shared__ float s[]; }\n}")


def test_generated_unit_leaves_the_kernel_source_untouched(tmp_path):
    """The kernel header is included from the source folder as it is; only the launcher's copy
    in the build folder is rewritten."""
    tu = rewrite.generate_translation_unit(build.CSRC, tmp_path).read_text()
    assert "<<<" not in tu.split("#line 1", 1)[1]
    assert '#include "cross_scan_kernel.cuh"' in tu
    assert "thread_local float smem[" in tu and "namespace tinyvim { namespace scan {" in tu
