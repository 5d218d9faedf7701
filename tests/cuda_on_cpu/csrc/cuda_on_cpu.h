// CUDA on the CPU: the little of CUDA that the scan kernel's own source (cross_scan_kernel.cuh and
// the launcher in cross_scan_kernel.cu) uses, so that g++ compiles it unmodified and runs it.
// tests/cuda_on_cpu/build.py rewrites each `k<<<grid, block, smem, stream>>>(args)` of a copy of the
// launcher into
//   tinyvim_cuda_on_cpu::launch(k, tinyvim_cuda_on_cpu::LaunchConfig(grid, block, smem, stream), args)
// and defines the kernel's `extern __shared__` array (per OS thread; see cuda_on_cpu_runtime.cpp).
//
// How a launch runs (cuda_on_cpu_runtime.cpp): every CUDA thread of a block is a fiber with its
// own stack; __syncthreads() switches back to the block's scheduler, which resumes the next fiber,
// so a barrier releases only when every thread of the block has reached it (threads resume in
// order in one block of a pair, in reverse order in the other). Blocks run two at a
// time interleaved at their barriers on one OS thread (each with its own shared memory), and such
// pairs run concurrently on a few OS threads: a race between blocks over global memory (two batch
// items sharing workspace rows) shows on every run, not only when the OS happens to interleave.
// The launch behaves like a GPU's where a plan could be wrong without a CPU noticing:
//   more than 1024 threads per block (x, y <= 1024, z <= 64), gridDim.y or .z > 65535,
//   gridDim.x >= 2^31, a zero dimension: cudaErrorInvalidConfiguration;
//   dynamic shared memory > 48 KiB (the limit without a cudaFuncSetAttribute opt-in):
//   cudaErrorInvalidValue;
//   shared memory starts as a NaN pattern (a read of a value no thread staged poisons the result
//   instead of reading a plausible stale one), and the 16 KiB past the launch's dynamic size are
//   checked after the block: a write there fails the launch with cudaErrorIllegalAddress;
//   threads of a block waiting at different __syncthreads calls (undefined on a GPU) fail the
//   launch with cudaErrorLaunchFailure.
// Errors surface at the launch, through cudaGetLastError (launches are synchronous; the stream is
// only recorded).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>   // CUDA's headers bring it; the launcher loops over a braced list
#include <tuple>
#include <math.h>

#include "cuda_types_on_cpu.h"

// CUDA's qualifiers: plain C++ here. __restrict__ is g++'s own keyword.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// `extern __shared__ T name[];` names the generated per-OS-thread array (rewrite.py).
#define __shared__ thread_local

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// The built-in variables: set by the scheduler before it resumes a fiber (one OS thread runs
// many CUDA threads, one at a time). Defined in cuda_on_cpu_runtime.cpp.
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Suspends the calling CUDA thread until every thread of its block has called it (or finished).
void __syncthreads() noexcept;

namespace tinyvim_cuda_on_cpu {

constexpr std::size_t kMaxDynamicSmem = 48 * 1024;
constexpr std::size_t kGuardBytes = 16 * 1024;
constexpr std::size_t kSmemCapacity = kMaxDynamicSmem + kGuardBytes;

// The calling OS thread's dynamic shared memory (kSmemCapacity bytes): the kernel's
// `extern __shared__` array, defined by the generated translation unit.
unsigned char* dynamic_smem() noexcept;

struct LaunchConfig {
    dim3 grid, block;
    std::size_t smem;
    cudaStream_t stream;
    LaunchConfig(dim3 g, dim3 b, std::size_t s = 0, cudaStream_t st = nullptr)
        : grid(g), block(b), smem(s), stream(st) {}
};

namespace detail {
// Runs body(ctx) once per CUDA thread of the grid (cuda_on_cpu_runtime.cpp); returns the launch's error.
cudaError_t run_grid(const LaunchConfig& cfg, void (*body)(const void*), const void* ctx) noexcept;
void set_last_error(cudaError_t err) noexcept;
cudaError_t take_last_error() noexcept;
cudaError_t peek_last_error() noexcept;
}  // namespace detail

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with a wrong number of arguments");
    // The arguments are converted to the kernel's parameter types once, at the launch, as CUDA does.
    struct Bound {
        void (*kernel)(P...);
        std::tuple<P...> params;
    };
    const Bound bound{kernel, std::tuple<P...>{static_cast<P>(args)...}};
    const cudaError_t err = detail::run_grid(
        cfg, [](const void* b) {
            const Bound& k = *static_cast<const Bound*>(b);
            std::apply(k.kernel, k.params);
        },
        &bound);
    if (err != cudaSuccess) detail::set_last_error(err);
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

// ---- __half: IEEE binary16 storage. The conversions are the compiler's _Float16 ones, which
// round to nearest even as CUDA's __float2half_rn does (and numpy's float16, which the tests use).
struct __half {
    unsigned short __x;
};
static_assert(sizeof(__half) == 2, "__half must be 16 bits: tensors are passed as raw memory");

inline float __half2float(__half v) noexcept {
    _Float16 h;
    std::memcpy(&h, &v.__x, 2);
    return static_cast<float>(h);
}

inline __half __float2half_rn(float f) noexcept {
    const _Float16 h = static_cast<_Float16>(f);
    __half out;
    std::memcpy(&out.__x, &h, 2);
    return out;
}

inline __half __float2half(float f) noexcept { return __float2half_rn(f); }

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
