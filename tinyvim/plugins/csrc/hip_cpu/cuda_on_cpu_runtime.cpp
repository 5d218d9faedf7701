// The non-template part of cuda_on_cpu.h: launch limits, CUDA's last-error state, error strings
// and the counters a test reads back (tinyvim_cuda_on_cpu_stats). No HIP-CPU needed here.
#include <atomic>
#include <cstddef>

#include "cuda_types_on_cpu.h"

namespace tinyvim_cuda_on_cpu {

namespace {

constexpr std::size_t kMaxDynamicSmem = 48 * 1024;   // same value as cuda_on_cpu.h

enum Stat { kLaunches, kMaxBlock, kMaxGridX, kMaxGridY, kMaxSmem, kLastStream, kOverruns, kRefused, kBlocks,
            kNbStats };
std::atomic<long long> g_stats[kNbStats];
thread_local cudaError_t t_last_error = cudaSuccess;   // per host thread, as in CUDA

void raise_to(Stat s, long long v) noexcept {
    long long cur = g_stats[s].load();
    while (v > cur && !g_stats[s].compare_exchange_weak(cur, v)) {
    }
}

}  // namespace

namespace detail {

void set_last_error(cudaError_t err) noexcept { t_last_error = err; }

cudaError_t take_last_error() noexcept {
    const cudaError_t err = t_last_error;
    t_last_error = cudaSuccess;
    return err;
}

cudaError_t peek_last_error() noexcept { return t_last_error; }

cudaError_t check_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                         std::size_t smem, const void* stream) noexcept {
    const unsigned long long threads = 1ull * bx * by * bz;
    cudaError_t err = cudaSuccess;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || threads > 1024 || bx > 1024 ||
        by > 1024 || bz > 64 || gx > 0x7FFFFFFFu || gy > 65535 || gz > 65535)
        err = cudaErrorInvalidConfiguration;
    else if (smem > kMaxDynamicSmem)
        err = cudaErrorInvalidValue;
    if (err != cudaSuccess) {
        ++g_stats[kRefused];
        return err;
    }
    ++g_stats[kLaunches];
    raise_to(kMaxBlock, static_cast<long long>(threads));
    raise_to(kMaxGridX, gx);
    raise_to(kMaxGridY, gy);
    raise_to(kMaxSmem, static_cast<long long>(smem));
    g_stats[kLastStream] = static_cast<long long>(reinterpret_cast<std::uintptr_t>(stream));
    return cudaSuccess;
}

void record_block(bool overrun) noexcept {
    ++g_stats[kBlocks];
    if (overrun) ++g_stats[kOverruns];
}

long long overruns() noexcept { return g_stats[kOverruns].load(); }

}  // namespace detail
}  // namespace tinyvim_cuda_on_cpu

extern "C" {

__attribute__((visibility("default"))) int tinyvim_cuda_on_cpu_stats(long long* out, int n) {
    using namespace tinyvim_cuda_on_cpu;
    for (int i = 0; i < n && i < kNbStats; ++i) out[i] = g_stats[i].load();
    return kNbStats;
}

__attribute__((visibility("default"))) void tinyvim_cuda_on_cpu_reset_stats(void) {
    for (auto& s : tinyvim_cuda_on_cpu::g_stats) s = 0;
}

__attribute__((visibility("default"))) const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {   // CUDA's own wording
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
    }
    return "unrecognized error code";
}

}  // extern "C"
