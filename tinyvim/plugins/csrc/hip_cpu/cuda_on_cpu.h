// CUDA on the CPU: what the scan kernel's own source (cross_scan_kernel.cuh + the launcher in
// cross_scan_kernel.cu) needs from CUDA, on top of ROCm's HIP-CPU runtime (vendored in
// tinyvim/plugins/third_party/hip-cpu). HIP-CPU supplies __global__/__device__, threadIdx,
// blockIdx, blockDim, __syncthreads (the threads of a block are fibers of one OS thread; a
// barrier switches fibers) and runs the blocks of a grid concurrently (std::for_each with
// par_unseq, on TBB). This header adds CUDA's names on top of it and a launch that behaves like
// a GPU's where a plan could be wrong without a CPU noticing. Built by tinyvim/plugins/hip_cpu.py,
// which rewrites each `k<<<grid, block, smem, stream>>>(args)` of a copy of the launcher into
//   tinyvim_cuda_on_cpu::launch(k, tinyvim_cuda_on_cpu::LaunchConfig(grid, block, smem, stream), args)
// and defines the kernel's `extern __shared__` array (the only other thing CUDA provides).
//
// The launch refuses what a GPU refuses, with CUDA's error codes, through cudaGetLastError:
//   more than 1024 threads per block (x, y <= 1024, z <= 64), gridDim.y or .z > 65535,
//   gridDim.x >= 2^31, a zero dimension: cudaErrorInvalidConfiguration;
//   dynamic shared memory > 48 KiB (the limit without a cudaFuncSetAttribute opt-in):
//   cudaErrorInvalidValue.
// Dynamic shared memory is filled with a NaN pattern before each block, as uninitialised memory
// would be: a read of a value no thread staged poisons the result instead of reading a
// plausible stale one. The 16 KiB past the launch's dynamic size are checked after the block:
// a write there (a plan that under-sizes the allocation) makes the launch fail with
// cudaErrorIllegalAddress, as an out-of-bounds shared access would on a GPU.
// Launches run synchronously on the calling thread (the stream is only recorded): errors surface
// at the launch.
#pragma once

#include <hip/hip_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <math.h>

#include "cuda_types_on_cpu.h"

// Blocks must run concurrently, as on a GPU: a race between blocks (e.g. two batch items sharing
// workspace rows) only shows then. libstdc++ silently runs the parallel algorithms serially when
// it cannot see TBB's headers, so that case is refused here.
#if defined(__GLIBCXX__) && !defined(_PSTL_PAR_BACKEND_TBB)
#error "libstdc++ would run HIP-CPU's blocks serially: TBB headers not found (pip install tbb-devel)"
#endif

// HIP-CPU marks kernels and device functions `simd` (and kernels `flatten`) for a vectorised
// path across a block's threads that only -fopenmp-simd enables and only barrier-free kernels
// take. Built without it, those SIMD clones are never called: they would only cost compile time
// (every mutant of the mutation test is a full build) and warn about the 16-bit types. Plain
// functions here. HIP-CPU ignores __launch_bounds__; so does this shim.
#undef __device__
#define __device__
#undef __global__
#define __global__

namespace tinyvim_cuda_on_cpu {

constexpr std::size_t kMaxDynamicSmem = 48 * 1024;
constexpr std::size_t kGuardBytes = 16 * 1024;
constexpr std::size_t kSmemCapacity = kMaxDynamicSmem + kGuardBytes;
constexpr std::uint32_t kPoison = 0x7FC0DEADu;   // a quiet NaN with a recognisable payload

// The calling OS thread's dynamic shared memory (kSmemCapacity bytes): the kernel's
// `extern __shared__` array, defined by the generated translation unit.
unsigned char* dynamic_smem() noexcept;

namespace detail {
// Implemented in cuda_on_cpu_runtime.cpp (one copy per library).
void set_last_error(cudaError_t err) noexcept;
cudaError_t take_last_error() noexcept;
cudaError_t peek_last_error() noexcept;
cudaError_t check_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                         std::size_t smem, const void* stream) noexcept;
void record_block(bool overrun) noexcept;
long long overruns() noexcept;
}  // namespace detail

struct LaunchConfig {
    dim3 grid, block;
    std::size_t smem;
    cudaStream_t stream;
    LaunchConfig(dim3 g, dim3 b, std::size_t s = 0, cudaStream_t st = nullptr)
        : grid(g), block(b), smem(s), stream(st) {}
};

// kSmemCapacity bytes of the poison pattern, made once: filling and checking are then plain
// memcpy/memcmp (libc's, fast), which matters for a 65537-block grid.
inline const unsigned char* poison_pattern() noexcept {
    static const struct Pattern {
        alignas(16) unsigned char bytes[kSmemCapacity];
        Pattern() noexcept {
            for (std::size_t i = 0; i < kSmemCapacity; i += 4) std::memcpy(bytes + i, &kPoison, 4);
        }
    } pattern;
    return pattern.bytes;
}

// Wraps a kernel: thread (0,0,0) poisons the block's shared memory, everyone waits, the kernel
// runs, everyone waits, thread (0,0,0) checks the guard bytes. The two extra barriers are what a
// GPU gives for free (a block starts after its shared memory is allocated and ends as a whole).
template <typename... P>
struct GuardedKernel {
    void (*kernel)(P...);
    std::size_t smem_bytes;

    void operator()(P... args) const noexcept {
        const bool first = threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0;
        const std::size_t checked = smem_bytes + kGuardBytes;
        if (first) std::memcpy(dynamic_smem(), poison_pattern(), checked);
        __syncthreads();
        kernel(args...);
        __syncthreads();
        if (first) detail::record_block(std::memcmp(dynamic_smem() + smem_bytes, poison_pattern(), kGuardBytes) != 0);
    }
};

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with a wrong number of arguments");
    const cudaError_t err = detail::check_launch(cfg.grid.x, cfg.grid.y, cfg.grid.z, cfg.block.x, cfg.block.y,
                                                 cfg.block.z, cfg.smem, cfg.stream);
    if (err != cudaSuccess) {
        detail::set_last_error(err);
        return;
    }
    const long long before = detail::overruns();
    const GuardedKernel<P...> guarded{kernel, cfg.smem};
    const std::tuple<P...> params{static_cast<P>(args)...};
    // What HIP-CPU's launch task does (hip/detail/grid_launch.hpp), run here on the calling
    // thread instead of being queued on HIP-CPU's stream: its stream processor is a thread that
    // busy-waits for work as long as the process lives, which would take one of CI's two cores
    // from every test that runs after this library is loaded. The blocks still run concurrently
    // (for_each_tile is a std::for_each with par_unseq, on TBB).
    hip::detail::Tiled_domain domain{cfg.block, cfg.grid, 0, [&]() { std::apply(guarded, params); }};
    for_each_tile(domain, guarded, params);
    if (detail::overruns() != before) detail::set_last_error(cudaErrorIllegalAddress);
}

}  // namespace tinyvim_cuda_on_cpu

inline cudaError_t cudaGetLastError() noexcept { return tinyvim_cuda_on_cpu::detail::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() noexcept { return tinyvim_cuda_on_cpu::detail::peek_last_error(); }
inline cudaError_t cudaDeviceSynchronize() noexcept { return cudaPeekAtLastError(); }

// CUDA's integer and float min/max overloads (device functions there; plain ones here).
inline int min(int a, int b) noexcept { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) noexcept { return a < b ? a : b; }
inline long long min(long long a, long long b) noexcept { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) noexcept { return a < b ? a : b; }
inline float min(float a, float b) noexcept { return fminf(a, b); }
inline int max(int a, int b) noexcept { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) noexcept { return a > b ? a : b; }
inline long long max(long long a, long long b) noexcept { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) noexcept { return a > b ? a : b; }
inline float max(float a, float b) noexcept { return fmaxf(a, b); }

// ---- __half: HIP-CPU's (half_float::half, IEEE binary16, conversions round to nearest even).
static_assert(sizeof(__half) == 2, "__half must be 16 bits: tensors are passed as raw memory");

// ---- __nv_bfloat16: the upper 16 bits of a float. Conversions as CUDA documents them:
// _rn rounds to nearest even (NaN stays NaN), _rz truncates.
struct __nv_bfloat16 {
    unsigned short __x;
};
static_assert(sizeof(__nv_bfloat16) == 2, "__nv_bfloat16 must be 16 bits");

inline float __bfloat162float(__nv_bfloat16 v) noexcept {
    const std::uint32_t u = static_cast<std::uint32_t>(v.__x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{0x7FFF};   // canonical NaN
    u += 0x7FFFu + ((u >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}

inline __nv_bfloat16 __float2bfloat16_rz(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{0x7FFF};
    return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}

inline __nv_bfloat16 __float2bfloat16(float f) noexcept { return __float2bfloat16_rn(f); }
