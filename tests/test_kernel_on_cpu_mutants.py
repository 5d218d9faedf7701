"""Mutation test of the kernel-on-CPU checks (tests/test_kernel_on_cpu.py and the cases of
tests/cuda_on_cpu): each bug below is applied as a text patch to a copy of the kernel's sources, the
copy is built like the real one (cuda_on_cpu.build.build_library), and the same check suite
(cuda_on_cpu.cases.check_suite, run in a child process on all the libraries) must FAIL for every
mutant and pass for the original. A mutant that crashes the child (a guard-page fault) is caught
when the child's stderr names the buffer it overran; the child is restarted on the libraries left.

Which part of the suite catches which bug (measured; see docs/kernel-checks.md):
  staging off-by-one, missing barrier after staging   NaN-filled shared memory (an unstaged B/C
                                                      value would otherwise read as a stale 0)
  missing barrier before staging / before write-out   fiber barriers + bitwise twin comparison,
                                                      on cases longer than one staging chunk
  h/w swap                                            non-square maps
  lost workspace batch offset                         workspace case with B >= 2: blocks run in
                                                      interleaved pairs, so the race shows every run
  under-sized shared-memory plan                      the plan taken vs the planner's rules, and
                                                      the overrun check (cudaErrorIllegalAddress)
  bfloat16 truncation                                 bit-for-bit comparison (within tolerance
                                                      of the reference, truncation would pass)
  grid slicing past 65535, smem budget past 48 KiB    the launch's GPU limits
  A read one past its end (zero-padding bound)        the guard page after each device buffer
                                                      (the result is unchanged: the padded state
                                                      stays 0 whatever A holds)
  accumulator stride written for 32-thread blocks     the plan cases with 64/128-thread blocks
  idle threads skipping the last barrier              threads resumed in reverse order in the
                                                      second block of each pair
  idle threads skipping the first barrier             threads waiting at different barriers
                                                      (cudaErrorLaunchFailure)
  halving that stops at 64 threads                    the plan taken vs the planner's rules (the
                                                      result is right: the accumulator moves to
                                                      the workspace)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cuda_on_cpu import build

from tinyvim.plugins.cpu_twin import cache_dir

#: name -> (file, original text, mutated text); each original must occur exactly once
MUTANTS = {
    "staging_off_by_one": ("cross_scan_kernel.cuh", "i < steps * 8 * NT; i += CB", "i < steps * 8 * NT - 1; i += CB"),
    "no_barrier_before_staging": ("cross_scan_kernel.cuh",
                                  "__syncthreads();   // every thread is done with the previous chunk's B/C", ";"),
    "no_barrier_after_staging": ("cross_scan_kernel.cuh", "bc[i] = v;\n        }\n        __syncthreads();",
                                 "bc[i] = v;\n        }\n        ;"),
    "no_barrier_before_writeout": ("cross_scan_kernel.cuh", "__syncthreads();\n    // Coalesced write-out",
                                   ";\n    // Coalesced write-out"),
    "h_w_swapped": ("cross_scan_kernel.cuh", "const int p = scan_position(k, t, H, W);",
                    "const int p = scan_position(k, t, W, H);"),
    "workspace_batch_offset_dropped": ("cross_scan_kernel.cuh", "acc = ws + (static_cast<size_t>(b) * D + d0) * L;",
                                       "acc = ws + static_cast<size_t>(d0) * L;"),
    "smem_plan_undersized": ("cross_scan_kernel.cu", "static_cast<size_t>(L) * (cb + 1) * sizeof(float)",
                             "static_cast<size_t>(L) * cb * sizeof(float)"),
    "bf16_truncated": ("cross_scan_kernel.cuh", "return __float2bfloat16_rn(v);", "return __float2bfloat16_rz(v);"),
    "grid_y_over_limit": ("cross_scan_kernel.cu", "constexpr int kMaxGridY = 65535;",
                          "constexpr int kMaxGridY = 65536;"),
    "smem_budget_over_limit": ("cross_scan_kernel.cu", "constexpr size_t kSmemBudget = 48 * 1024;",
                               "constexpr size_t kSmemBudget = 64 * 1024;"),
    # --- added with our own runtime (issue 24); the suite before it passed each of these
    "A_read_past_end": ("cross_scan_kernel.cuh", "a[k][n] = n < N ? A[", "a[k][n] = n <= N ? A["),
    "acc_stride_assumes_32": ("cross_scan_kernel.cuh", "acc_ps = CB + 1;", "acc_ps = 32 + 1;"),
    "idle_threads_skip_last_barrier": ("cross_scan_kernel.cuh", "__syncthreads();\n    // Coalesced write-out",
                                       "if (active) __syncthreads();\n    // Coalesced write-out"),
    "halving_stops_at_64": ("cross_scan_kernel.cu", "while (plan.cb > 32 && bc_bytes", "while (plan.cb > 64 && bc_bytes"),
    "idle_threads_skip_first_barrier": ("cross_scan_kernel.cuh",
                                        "__syncthreads();   // every thread is done with the previous chunk's B/C",
                                        "if (active) __syncthreads();   // every thread is done"),
}
#: the case(s) that must catch each mutant first (cases run cheapest first, fail-fast): pins
#: down that the property named in the module docstring is what catches it
FIRST_CAUGHT_BY = {
    "staging_off_by_one": "nonsquare_3x4_n8", "no_barrier_before_staging": "nonsquare_7x5_n16_b3",
    "no_barrier_after_staging": "nonsquare_3x4_n8", "no_barrier_before_writeout": "nonsquare_3x4_n8",
    "h_w_swapped": "nonsquare_3x4_n8",
    # a race: the 2-block case shows it in some runs only, the 6-block one in every run measured
    "workspace_batch_offset_dropped": ("workspace_20x17_b2", "workspace_17x19_b3_n16"),
    # the plan check (its smem is not the rules') comes first; without it, the overrun check on
    # nonsquare_7x5_n16_b3 (cudaErrorIllegalAddress)
    "smem_plan_undersized": ("nonsquare_3x4_n8", "nonsquare_7x5_n16_b3"), "bf16_truncated": "nonsquare_3x4_n8",
    "grid_y_over_limit": "batch_65537", "smem_budget_over_limit": "workspace_20x17_b2",
    "A_read_past_end": "crash:A",
    "acc_stride_assumes_32": "plan_48ch_3x4_n5", "idle_threads_skip_last_barrier": "nonsquare_7x5_n16_b3",
    "halving_stops_at_64": "workspace_17x19_b3_n16", "idle_threads_skip_first_barrier": "nonsquare_3x4_n8",
}


def mutate(name: str, root: Path) -> Path:
    """A copy of the kernel's sources with mutant `name` applied."""
    file, old, new = MUTANTS[name]
    src = root / name
    src.mkdir(parents=True)
    for f in build.KERNEL_SOURCES:
        shutil.copy(build.CSRC / f, src / f)
    text = (src / file).read_text()
    assert text.count(old) == 1, f"mutant {name}: {old!r} occurs {text.count(old)} times in {file} (kernel changed?)"
    (src / file).write_text(text.replace(old, new))
    return src


def run_checks(paths: list[str]) -> tuple[dict[str, int], dict[str, dict], dict[str, str]]:
    """The check suite on every library in child processes: (failed cases per finished library,
    first failing case per library, the guard-page message of each library that crashed its child).
    After a crash the child is restarted on the libraries it had not reached."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done, first_failure, crashed = {}, {}, {}
    left = list(paths)
    while left:
        proc = subprocess.run([sys.executable, "-m", "cuda_on_cpu", "check", "--no-reference", "--fail-fast", *left],
                              capture_output=True, text=True, timeout=600, env=env)
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        started = [ln["library"] for ln in lines if ln.get("start")]
        for ln in lines:
            if ln.get("done"):
                done[ln["library"]] = ln["failed"]
            elif not ln.get("start") and ln["problems"]:
                first_failure.setdefault(ln["library"], ln)
        if proc.returncode >= 0 or not started or started[-1] in done:
            assert set(left) <= set(done), (proc.returncode, proc.stderr[-2000:])
            break
        crashed[started[-1]] = "\n".join(ln for ln in proc.stderr.splitlines() if "tinyvim_cuda_on_cpu:" in ln)
        left = left[left.index(started[-1]) + 1:]
    return done, first_failure, crashed


@pytest.mark.slow    # cold: 16 g++ builds (~40 s on 2 cores); cached by content afterwards (~15 s)
def test_check_suite_catches_every_mutant(tmp_path):
    t0 = time.perf_counter()
    original = build.build_library()
    # Mutants are cached by content like the real library (cache_dir()/mutants), two builds at a
    # time (CI has two cores; each build is one g++ process).
    with ThreadPoolExecutor(2) as pool:
        libs = dict(zip(MUTANTS, pool.map(
            lambda name: build.build_library(cache_dir() / "mutants", src_dir=mutate(name, tmp_path)), MUTANTS)))
    t_build = time.perf_counter() - t0
    paths = [str(original), *map(str, libs.values())]
    assert len(set(paths)) == len(paths)                      # every mutant is a different build
    done, first_failure, crashed = run_checks(paths)
    assert done.get(str(original)) == 0, first_failure.get(str(original), crashed.get(str(original)))
    caught = {name: done.get(str(lib), 0) > 0 or str(lib) in crashed for name, lib in libs.items()}
    assert all(caught.values()), {n: c for n, c in caught.items() if not c}
    for name, lib in libs.items():
        want = FIRST_CAUGHT_BY[name]
        if isinstance(want, str) and want.startswith("crash:"):
            assert f"device buffer '{want[6:]}'" in crashed.get(str(lib), ""), (name, crashed, first_failure.get(str(lib)))
        else:
            assert first_failure[str(lib)]["case"] in (want if isinstance(want, tuple) else (want,)), name
    print(f"\nmutants caught {sum(caught.values())}/{len(caught)}; builds {t_build:.1f} s, "
          f"checks {time.perf_counter() - t0 - t_build:.1f} s")
    for name, lib in libs.items():
        if str(lib) in crashed:
            print(f"  {name:32s} crashed: {crashed[str(lib)]}")
        else:
            f = first_failure[str(lib)]
            print(f"  {name:32s} {f['case']:24s} {f['dtype']:9s} {f['problems'][0]}")
