"""The CUDA kernel's own source, run on the CPU through ROCm's HIP-CPU (vendored in
third_party/hip-cpu), and the TensorRT plugin's enqueue on top of it.

What is compiled is the UNMODIFIED cross_scan_kernel.cuh and the launcher + C ABI of
cross_scan_kernel.cu, with g++, against csrc/hip_cpu/ (stand-ins for cuda_runtime.h, cuda_fp16.h,
cuda_bf16.h and cuda_runtime_api.h over HIP-CPU; see cuda_on_cpu.h for the GPU limits the launch
enforces). The only edit is generated at build time into the build folder: each
`kernel<<<grid, block, smem, stream>>>(args)` of the launcher becomes a call of the shim's
launch(), and the kernel's `extern __shared__` array gets its per-thread definition.

Libraries are cached like the CPU twin's (cache_dir(), keyed by a hash of the sources, the shim,
the generator's code, HIP-CPU's pinned commit, the compiler, flags and TBB paths), so a second
build is a file lookup. HIP-CPU runs a grid's
blocks through the C++17 parallel algorithms, which libstdc++ implements on TBB: the pip package
tbb-devel (the `test` extra) provides it, or Debian's libtbb-dev.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins.cpu_twin import cache_dir, cross_selective_scan_cpu, find_compiler
from tinyvim.plugins.errors import PluginError

PLUGIN_DIR = Path(__file__).resolve().parent
CSRC = PLUGIN_DIR / "csrc"
SHIM = CSRC / "hip_cpu"
HIP_CPU = PLUGIN_DIR / "third_party" / "hip-cpu"
#: the kernel's sources, as they are in the repository (a mutation test passes a patched copy)
KERNEL_SOURCES = ("cross_scan_kernel.cu", "cross_scan_kernel.cuh", "scan_step.h", "tinyvim_scan.h")
PLUGIN_SOURCES = ("trt_plugin.cpp", "plugin_logic.cpp", "plugin_logic.h", "tinyvim_scan.h",
                  "trt_contract_check.cpp")
#: -fno-extern-tls-init: the kernel's `extern __shared__` array is an extern thread_local here,
#: defined without dynamic initialisation, so no TLS init wrapper is needed (or emitted).
#: -ffp-contract=off: the arithmetic header writes its fmas explicitly (as the twin is built).
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-extern-tls-init", "-ffp-contract=off",
            "-pthread", "-Wall", "-Wno-unknown-pragmas")
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
STATS = ("launches", "max_block", "max_grid_x", "max_grid_y", "max_smem", "last_stream", "overruns", "refused",
         "blocks")


# --------------------------------------------------------------------------- source rewrite
_LAUNCH = "tinyvim_cuda_on_cpu::launch"
_CONFIG = "tinyvim_cuda_on_cpu::LaunchConfig"


def _strip_comments(text: str) -> str:
    """`text` with comments blanked (same length, newlines kept), for the scanners below."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, text, flags=re.S)


def _matching(code: str, at: int, open_ch: str, close_ch: str, step: int) -> int:
    """Index of the bracket that balances the one at code[at]: forward from an `open_ch`
    (step 1) or back from a `close_ch` (step -1)."""
    depth = 0
    into, out_of = (open_ch, close_ch) if step == 1 else (close_ch, open_ch)
    i = at
    while 0 <= i < len(code):
        if code[i] == into:
            depth += 1
        elif code[i] == out_of:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise PluginError(f"unbalanced {open_ch}{close_ch} {'after' if step == 1 else 'before'} offset {at}")


def rewrite_launches(text: str) -> tuple[str, int]:
    """Each `KERNEL<<<CONFIG>>>(ARGS)` -> `launch(KERNEL, LaunchConfig(CONFIG), ARGS)`; returns the
    text and the number of launches rewritten. Line breaks are kept, so compiler messages point
    at the original lines (the generated file starts with a #line directive)."""
    out, count = text, 0
    while True:
        code = _strip_comments(out)
        start = code.find("<<<")
        if start < 0:
            return out, count
        stop = code.find(">>>", start)
        if stop < 0:
            raise PluginError(f"`<<<` without `>>>` at offset {start}")
        # the kernel expression: an identifier path with template arguments, e.g. ns::k<NT, T>
        k = start
        while k > 0 and code[k - 1].isspace():
            k -= 1
        if code[k - 1] == ">":
            k = _matching(code, k - 1, "<", ">", -1)
        while k > 0 and (code[k - 1].isalnum() or code[k - 1] in "_:"):
            k -= 1
        kernel = out[k:start].strip()
        if not re.match(r"[A-Za-z_:]", kernel):
            raise PluginError(f"cannot find the kernel name before `<<<` at offset {start}")
        open_paren = stop + 3
        while code[open_paren].isspace():
            open_paren += 1
        if code[open_paren] != "(":
            raise PluginError(f"`>>>` not followed by the kernel's arguments at offset {stop}")
        close_paren = _matching(code, open_paren, "(", ")", 1)
        config = out[start + 3:stop]
        args = out[open_paren + 1:close_paren]
        call = f"::{_LAUNCH}({kernel}, ::{_CONFIG}({config})" + (f",{args})" if args.strip() else ")")
        out = out[:k] + call + out[close_paren + 1:]
        count += 1


def extern_shared_arrays(text: str) -> list[tuple[list[str], str, str]]:
    """(namespaces, element type, name) of each `extern __shared__ T name[];`: the namespaces
    enclosing the declaration, which is where a block-scope extern declaration points."""
    code = _strip_comments(text)
    found = []
    decl = re.compile(r"extern\s+__shared__\s+(?:alignas\(\w+\)\s+)?([\w:]+(?:\s*\*)?)\s+(\w+)\s*\[\s*\]\s*;")
    for m in decl.finditer(code):
        stack: list[str | None] = []
        for tok in re.finditer(r"namespace\s+(\w+)\s*\{|namespace\s*\{|\{|\}", code[:m.start()]):
            if tok.group(0) == "}":
                stack.pop()
            elif tok.group(0).startswith("namespace"):
                stack.append(tok.group(1) or "")     # "" = an anonymous namespace
            else:
                stack.append(None)
        namespaces = [s for s in stack if s is not None]
        if "" in namespaces:
            raise PluginError(f"extern __shared__ {m.group(2)} is inside an anonymous namespace: "
                              "its definition could not be provided from another place")
        found.append((namespaces, m.group(1), m.group(2)))
    return found


def generate_translation_unit(src_dir: Path, out_dir: Path) -> Path:
    """Writes out_dir/cross_scan_kernel_on_cpu.cpp: the shim, the definition of the kernel's
    dynamic shared memory, then the launcher with its launches rewritten (it includes the
    kernel header from src_dir, unmodified)."""
    launcher = (src_dir / "cross_scan_kernel.cu").read_text()
    rewritten, n = rewrite_launches(launcher)
    if n == 0:
        raise PluginError("no kernel launch (<<<...>>>) found in cross_scan_kernel.cu")
    arrays = {(tuple(ns), t, name) for f in ("cross_scan_kernel.cuh", "cross_scan_kernel.cu")
              for ns, t, name in extern_shared_arrays((src_dir / f).read_text())}
    if len(arrays) != 1:
        # On a GPU every extern __shared__ array aliases the same dynamic allocation; separate
        # thread_locals would not, so more than one name is refused rather than mis-modelled.
        raise PluginError(f"expected one extern __shared__ array in the kernel, found {sorted(arrays)}")
    (namespaces, elem, name), = arrays
    open_ns = "".join(f"namespace {ns} {{ " for ns in namespaces)
    close_ns = "}" * len(namespaces)
    qualified = "::" + "::".join([*namespaces, name])
    text = f"""// GENERATED by tinyvim/plugins/hip_cpu.py from {src_dir / 'cross_scan_kernel.cu'}; do not edit.
#include "cuda_on_cpu.h"

// The kernel's dynamic shared memory: per OS thread, which is per block under HIP-CPU.
{open_ns}alignas(16) thread_local {elem} {name}[tinyvim_cuda_on_cpu::kSmemCapacity / sizeof({elem})];{close_ns}
unsigned char* tinyvim_cuda_on_cpu::dynamic_smem() noexcept {{
    return reinterpret_cast<unsigned char*>({qualified});
}}

#line 1 "{src_dir / 'cross_scan_kernel.cu'}"
{rewritten}"""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cross_scan_kernel_on_cpu.cpp"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- TBB and the build
@dataclass(frozen=True)
class Tbb:
    include: Path | None      # None: the compiler's default paths
    lib: Path | None


def tbb_problem() -> str | None:
    """Why the kernel-on-CPU build cannot run here (TBB missing), or None: what tests skip on."""
    try:
        find_tbb()
        return None
    except PluginError as exc:
        return str(exc)


def find_tbb() -> Tbb:
    """TBB's headers and library: the tbb-devel wheel of this Python environment, else the system's."""
    try:
        files = importlib.metadata.files("tbb-devel") or []
        dist = importlib.metadata.distribution("tbb-devel")
        header = next((f for f in files if str(f).replace("\\", "/").endswith("include/tbb/tbb.h")), None)
        lib = next((f for f in files if Path(str(f)).name == "libtbb.so"), None)
        if header is not None:
            inc = Path(dist.locate_file(header)).resolve().parents[1]
            libdir = Path(dist.locate_file(lib)).resolve().parent if lib is not None else None
            if libdir is None:   # the runtime library comes with the `tbb` wheel
                libdir = next((p.parent for p in Path(sys.prefix, "lib").glob("libtbb.so*")), None)
            if libdir is not None:
                return Tbb(inc, libdir)
    except importlib.metadata.PackageNotFoundError:
        pass
    for inc in (Path("/usr/include"), Path("/usr/local/include")):
        if (inc / "tbb" / "tbb.h").is_file():
            return Tbb(None, None)
    raise PluginError("TBB not found: HIP-CPU runs a grid's blocks on the C++17 parallel algorithms, which "
                      "libstdc++ implements with TBB; pip install tbb-devel (or apt-get install libtbb-dev)")


def hip_cpu_commit() -> str:
    return (HIP_CPU / "VENDORED_COMMIT").read_text().split()[0]


def _tbb_flags(tbb: Tbb) -> tuple[list[str], list[str]]:
    inc = ["-isystem", str(tbb.include)] if tbb.include else []
    link = ([f"-L{tbb.lib}", f"-Wl,-rpath,{tbb.lib}"] if tbb.lib else []) + ["-ltbb"]
    return inc, link


def _hash(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _generator_source() -> str:
    """The code that writes the generated translation unit: part of the cache key, so that a
    changed rewrite is never served from a stale library."""
    return "".join(inspect.getsource(f) for f in (_strip_comments, _matching, rewrite_launches,
                                                  extern_shared_arrays, generate_translation_unit))


def _shim_files() -> list[Path]:
    return sorted(p for p in SHIM.iterdir() if p.is_file())


def _compile(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.strip().splitlines()
        raise PluginError(f"building {what} failed: {(errors or ['(no output)'])[0]}")


def _atomic_build(target: Path, build) -> Path:
    """Runs build(tmp_path) and renames the result onto target (concurrent test processes never
    load a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_library(out_dir: Path | None = None, src_dir: Path | None = None) -> Path:
    """libtinyvim_scan_cuda_on_cpu-<hash>.so: the kernel and launcher of src_dir (default: the
    package's csrc) through the shim; cached by content."""
    src_dir = Path(src_dir) if src_dir else CSRC
    out_dir = Path(out_dir) if out_dir else cache_dir()
    cxx, tbb = find_compiler(), find_tbb()
    inc, link = _tbb_flags(tbb)
    key = _hash([cxx, _compiler_version(cxx), *CXXFLAGS, *inc, *link, hip_cpu_commit(), _generator_source(),
                 *[(src_dir / f).read_bytes() for f in KERNEL_SOURCES], *[p.read_bytes() for p in _shim_files()]])
    target = out_dir / f"libtinyvim_scan_cuda_on_cpu-{key}.so"
    if target.exists():
        return target

    def build(tmp: str) -> None:
        with tempfile.TemporaryDirectory(dir=out_dir) as gen:
            tu = generate_translation_unit(src_dir, Path(gen))
            cmd = [cxx, *CXXFLAGS, "-shared", f"-I{SHIM}", f"-I{src_dir}", "-isystem", str(HIP_CPU / "include"),
                   *inc, str(tu), str(SHIM / "cuda_on_cpu_runtime.cpp"), "-o", tmp, *link]
            _compile(cmd, "the CUDA kernel on HIP-CPU")

    out_dir.mkdir(parents=True, exist_ok=True)
    return _atomic_build(target, build)


#: the TensorRT plugin and its contract driver, as CMake builds them (warnings as errors)
TRT_CXXFLAGS = ("-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wsuggest-override")


def build_trt_on_cpu(tensorrt_include: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """The TensorRT plugin (trt_plugin.cpp + plugin_logic.cpp) compiled against TensorRT's headers in
    `tensorrt_include` with the shim's cuda_runtime_api.h, linked to the kernel-on-CPU library, and
    tinyvim_trt_contract_check built the same way; cached by content. Returns {"kernel", "plugin",
    "driver"} paths. Nothing of CUDA is needed: the plugin's enqueue runs the kernel's source on
    host memory."""
    tensorrt_include = Path(tensorrt_include)
    if not (tensorrt_include / "NvInfer.h").is_file():
        raise PluginError(f"TensorRT headers not found: no NvInfer.h in {tensorrt_include}")
    out_dir = Path(out_dir) if out_dir else cache_dir()
    kernel = build_library(out_dir)
    cxx = find_compiler()
    headers = sorted(tensorrt_include.glob("*.h"))
    key = _hash([cxx, _compiler_version(cxx), *TRT_CXXFLAGS, kernel.name,
                 *[(CSRC / f).read_bytes() for f in PLUGIN_SOURCES], *[p.read_bytes() for p in _shim_files()],
                 *[h.read_bytes() for h in headers]])
    includes = [f"-I{SHIM}", f"-I{CSRC}", "-isystem", str(tensorrt_include)]
    plugin = out_dir / f"libtinyvim_trt_plugin_on_cpu-{key}.so"
    driver = out_dir / f"tinyvim_trt_contract_check_on_cpu-{key}"
    if not plugin.exists():
        _atomic_build(plugin, lambda tmp: _compile(
            [cxx, *TRT_CXXFLAGS, "-shared", "-fvisibility=hidden", *includes, str(CSRC / "trt_plugin.cpp"),
             str(CSRC / "plugin_logic.cpp"), str(kernel), f"-Wl,-rpath,{kernel.parent}", "-o", tmp],
            f"the TensorRT plugin on the CPU kernel ({tensorrt_include})"))
    if not driver.exists():
        def build_driver(tmp: str) -> None:
            # -rdynamic: its getPluginRegistry stands in for libnvinfer's (CMake: ENABLE_EXPORTS)
            _compile([cxx, *TRT_CXXFLAGS, *includes, str(CSRC / "trt_contract_check.cpp"), "-rdynamic", "-ldl",
                      "-o", tmp], f"tinyvim_trt_contract_check ({tensorrt_include})")
            os.chmod(tmp, 0o755)
        _atomic_build(driver, build_driver)
    return {"kernel": kernel, "plugin": plugin, "driver": driver}


@functools.cache
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


# --------------------------------------------------------------------------- running it
def load_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The kernel library (built on demand when no path is given) with its C ABI typed."""
    lib = ctypes.CDLL(str(path or build_library()))
    lib.tinyvim_cross_scan_cuda.restype = ctypes.c_int
    lib.tinyvim_cross_scan_cuda.argtypes = ([ctypes.c_void_p] * 8 + [ctypes.c_int] * 6 +
                                            [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
    lib.tinyvim_cross_scan_cuda_workspace_size.restype = ctypes.c_size_t
    lib.tinyvim_cross_scan_cuda_workspace_size.argtypes = [ctypes.c_int] * 6
    lib.tinyvim_cross_scan_cuda_error_string.restype = ctypes.c_char_p
    lib.tinyvim_cross_scan_cuda_error_string.argtypes = [ctypes.c_int]
    lib.tinyvim_cuda_on_cpu_stats.restype = ctypes.c_int
    lib.tinyvim_cuda_on_cpu_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
    lib.tinyvim_cuda_on_cpu_reset_stats.restype = None
    return lib


def stats(lib: ctypes.CDLL) -> dict[str, int]:
    """What the shim's launches saw since the last reset (see cuda_types_on_cpu.h)."""
    out = (ctypes.c_longlong * len(STATS))()
    lib.tinyvim_cuda_on_cpu_stats(out, len(STATS))
    return dict(zip(STATS, out))


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN -> 0x7FFF)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FFF), r)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    """A float array as the kernel reads it for `dtype`: float32, float16, or bf16 bits (uint16)."""
    if dtype == "bfloat16":
        return to_bf16_bits(a)
    return np.ascontiguousarray(a, dtype=np.float16 if dtype == "float16" else np.float32)


def from_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_bits_to_float32(a) if dtype == "bfloat16" else np.asarray(a, dtype=np.float32)


def cross_selective_scan_on_cpu(lib: ctypes.CDLL, x, delta, Bs, Cs, A, Ds, delta_bias, dtype: str = "float32",
                                workspace: np.ndarray | None = None, stream: int = 0) -> tuple[int, np.ndarray]:
    """One call of tinyvim_cross_scan_cuda on host memory. x, delta, Bs, Cs are converted to
    `dtype`'s storage (to_storage), A/Ds/delta_bias to float32; y is allocated NaN-filled.
    The workspace, when the shape needs one and none is given, is allocated NaN-filled (the ABI
    promises no initialisation is needed). Returns (status, y in dtype's storage)."""
    io = [to_storage(t, dtype) for t in (x, delta, Bs, Cs)]
    params = [np.ascontiguousarray(t, dtype=np.float32) for t in (A, Ds, delta_bias)]
    b, d, h, w = io[0].shape
    n = params[0].shape[1]
    y = np.full_like(io[0], 0xFFFF if dtype == "bfloat16" else np.nan)
    need = lib.tinyvim_cross_scan_cuda_workspace_size(b, d, h, w, n, DTYPES[dtype])
    if workspace is None and need:
        workspace = np.full(need // 4, np.nan, dtype=np.float32)
    ws_ptr = workspace.ctypes.data if workspace is not None else None
    ws_bytes = workspace.nbytes if workspace is not None else 0
    rc = lib.tinyvim_cross_scan_cuda(*[t.ctypes.data for t in io + params], y.ctypes.data, b, d, h, w, n,
                                     DTYPES[dtype], ws_ptr, ws_bytes, stream or None)
    return rc, y


# --------------------------------------------------------------------------- the check suite
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
#: chunks shows), the global-workspace accumulator with B >= 2 (a lost batch offset shows only
#: when blocks of different batch items run at once), and a batch above gridDim.y's 65535.
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
#: Tolerance against the float64 reference of the same (dtype-rounded) inputs, relative to
#: max|y|: float32 arithmetic (measured ~1e-7, 1e-5 as for the twin) plus, for 16-bit outputs,
#: the output rounding (half an ulp: 2^-11 for float16, 2^-8 for bfloat16, of an element <= max|y|).
REF_TOL = {"float32": 1e-5, "float16": 1e-5 + 2.0 ** -11, "bfloat16": 1e-5 + 2.0 ** -8}


def case_inputs(case: Case, dtype: str) -> dict[str, np.ndarray]:
    """The case's random inputs, x/delta/Bs/Cs rounded to `dtype` (as float32), A/Ds/bias float32."""
    inp = random_scan_inputs(*case.shape, seed=sum(case.shape[1:]), dtype=np.float32)
    for k in ("x", "delta", "Bs", "Cs"):
        inp[k] = from_storage(to_storage(inp[k], dtype), dtype)
    return inp


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_case(lib: ctypes.CDLL, case: Case, dtype: str, reference: bool = True) -> dict:
    """Runs the kernel library on one case; compares it bit for bit with the CPU twin (same
    arithmetic header, same summation order; fed the same rounded inputs, its float32 output
    rounded to `dtype` as the kernel rounds) and, with `reference`, with the float64 reference
    within REF_TOL. Returns the figures and `problems` (empty when the case passes)."""
    inp = case_inputs(case, dtype)
    lib.tinyvim_cuda_on_cpu_reset_stats()
    status, y = cross_selective_scan_on_cpu(lib, **inp, dtype=dtype)
    seen = stats(lib)
    b, d, h, w, n = case.shape
    out = {"case": case.name, "dtype": dtype, "status": status, "stats": seen,
           "workspace_bytes": int(lib.tinyvim_cross_scan_cuda_workspace_size(b, d, h, w, n, DTYPES[dtype])),
           "problems": []}
    if status != 0:
        out["problems"].append(f"status {status} ({lib.tinyvim_cross_scan_cuda_error_string(status).decode()})")
        return out
    if seen["overruns"]:
        out["problems"].append(f"{seen['overruns']} blocks wrote past their dynamic shared memory")
    twin = to_storage(cross_selective_scan_cpu(**inp), dtype)
    got = from_storage(y, dtype)
    out["bits_equal_twin"] = bool(np.array_equal(y.view(np.uint8), twin.view(np.uint8)))
    out["err_twin"] = _rel(got, from_storage(twin, dtype))
    if not out["bits_equal_twin"]:
        out["problems"].append(f"differs from the CPU twin (max rel {out['err_twin']:.3g})")
    if reference:
        sel = list(case.ref_batches) if case.ref_batches else slice(None)
        ref = cross_selective_scan_reference(**{k: (v[sel] if k in ("x", "delta", "Bs", "Cs") else v)
                                                for k, v in inp.items()})
        out["err_ref"] = _rel(got[sel], ref)
        if not out["err_ref"] <= REF_TOL[dtype]:
            out["problems"].append(f"error vs float64 reference {out['err_ref']:.3g} > {REF_TOL[dtype]:.3g}")
    return out


def check_suite(lib: ctypes.CDLL, reference: bool = True, fail_fast: bool = False):
    """check_case for every case x dtype, cheapest first; yields each result (stops after the
    first failing one with fail_fast)."""
    for case in CASES:
        for dtype in DTYPES:
            res = check_case(lib, case, dtype, reference)
            yield res
            if fail_fast and res["problems"]:
                return


def main(argv: list[str] | None = None) -> int:
    """`python -m tinyvim.plugins.hip_cpu check [--no-reference] [--fail-fast] LIB...`: the check
    suite on built kernel libraries, one JSON line per case x dtype (with "library") and one
    {"library": ..., "done": true, "failed": n} line per library. A test tool: the mutation test
    runs its mutants' libraries through it in a separate process (a crashing or hanging mutant
    cannot take the test process down; each library's "done" line tells which ones finished)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m tinyvim.plugins.hip_cpu")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("libraries", nargs="+")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--fail-fast", action="store_true")
    args = parser.parse_args(argv)
    total = 0
    for path in args.libraries:
        lib = load_library(path)
        failed = 0
        for res in check_suite(lib, reference=not args.no_reference, fail_fast=args.fail_fast):
            failed += bool(res["problems"])
            print(json.dumps({"library": path, **res}), flush=True)
        print(json.dumps({"library": path, "done": True, "failed": failed}), flush=True)
        total += failed
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
