// Host side of the CUDA cross selective scan: launch planning, type/state dispatch and the
// C ABI (tinyvim_scan.h). The kernel itself is in cross_scan_kernel.cuh.
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>

#include "cross_scan_kernel.cuh"
#include "tinyvim_scan.h"

namespace {

using tinyvim::scan::bc_chunk;
using tinyvim::scan::cross_scan_kernel;
using tinyvim::scan::state_capacity;

// Static shared memory ceiling: 48 KiB works on every architecture without opting in,
// and leaves room for several resident blocks per SM.
constexpr size_t kSmemBudget = 48 * 1024;

struct Plan {
    int nt = 0;           // state capacity (8 or 16), 0 = unsupported
    int cb = 0;           // channels (threads) per block
    bool acc_in_smem = true;
    size_t smem = 0;      // dynamic shared memory bytes
    size_t workspace = 0; // global fp32 accumulator bytes when !acc_in_smem
};

size_t bc_bytes(int nt) {
    return static_cast<size_t>(nt == 8 ? bc_chunk<8>() : bc_chunk<16>()) * 8 * nt * sizeof(float);
}

size_t acc_bytes(int L, int cb) { return static_cast<size_t>(L) * (cb + 1) * sizeof(float); }

Plan make_plan(int B, int D, int H, int W, int N) {
    Plan plan;
    plan.nt = state_capacity(N);
    if (plan.nt == 0 || B < 0 || D < 1 || H < 1 || W < 1) return plan;
    // Channel block: the one of 32/64/128 that wastes the fewest idle lanes (ceil(D/cb)*cb
    // smallest; ties to the larger block, whose fixed B/C staging is shared by more threads).
    int best = 32;
    for (int cb : {64, 128}) {
        if (((D + cb - 1) / cb) * cb <= ((D + best - 1) / best) * best) best = cb;
    }
    const long long L = static_cast<long long>(H) * W;
    plan.cb = best;
    while (plan.cb > 32 && bc_bytes(plan.nt) + acc_bytes(static_cast<int>(L), plan.cb) > kSmemBudget)
        plan.cb /= 2;
    plan.acc_in_smem = bc_bytes(plan.nt) + acc_bytes(static_cast<int>(L), plan.cb) <= kSmemBudget;
    plan.smem = bc_bytes(plan.nt) + (plan.acc_in_smem ? acc_bytes(static_cast<int>(L), plan.cb) : 0);
    plan.workspace = plan.acc_in_smem ? 0 : static_cast<size_t>(B) * D * L * sizeof(float);
    return plan;
}

template <int NT, typename T>
cudaError_t launch(const Plan& plan, const void* x, const void* delta, const void* Bs,
                   const void* Cs, const float* A, const float* Ds, const float* bias, void* y,
                   int B, int D, int H, int W, int N, float* ws, cudaStream_t stream) {
    const size_t L = static_cast<size_t>(H) * W;
    const int blocks_x = (D + plan.cb - 1) / plan.cb;
    // gridDim.y is limited to 65535: larger batches go in slices (pointer offsets).
    constexpr int kMaxGridY = 65535;
    for (int b0 = 0; b0 < B; b0 += kMaxGridY) {
        const int nb = B - b0 < kMaxGridY ? B - b0 : kMaxGridY;
        const size_t o_x = static_cast<size_t>(b0) * D * L;
        const size_t o_bc = static_cast<size_t>(b0) * 4 * N * L;
        cross_scan_kernel<NT, T><<<dim3(blocks_x, nb), plan.cb, plan.smem, stream>>>(
            static_cast<const T*>(x) + o_x, static_cast<const T*>(delta) + 4 * o_x,
            static_cast<const T*>(Bs) + o_bc, static_cast<const T*>(Cs) + o_bc, A, Ds, bias,
            static_cast<T*>(y) + o_x, ws ? ws + o_x : nullptr, D, H, W, N);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
}

template <typename T>
cudaError_t dispatch_state(const Plan& plan, const void* x, const void* delta, const void* Bs,
                           const void* Cs, const float* A, const float* Ds, const float* bias,
                           void* y, int B, int D, int H, int W, int N, float* ws,
                           cudaStream_t stream) {
    switch (plan.nt) {
        case 8: return launch<8, T>(plan, x, delta, Bs, Cs, A, Ds, bias, y, B, D, H, W, N, ws, stream);
        case 16: return launch<16, T>(plan, x, delta, Bs, Cs, A, Ds, bias, y, B, D, H, W, N, ws, stream);
        default: return cudaErrorNotSupported;
    }
}

bool dtype_ok(int dtype) {
    return dtype == tinyvim::scan::kF32 || dtype == tinyvim::scan::kF16 ||
           dtype == tinyvim::scan::kBF16;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int tinyvim_cross_scan_cuda_abi_version(void) {
    return TINYVIM_SCAN_ABI_VERSION;
}

__attribute__((visibility("default"))) int tinyvim_cross_scan_cuda_supports(int N, int dtype) {
    return state_capacity(N) != 0 && dtype_ok(dtype) ? 1 : 0;
}

__attribute__((visibility("default"))) size_t tinyvim_cross_scan_cuda_workspace_size(
    int B, int D, int H, int W, int N, int /*dtype*/) {
    return make_plan(B, D, H, W, N).workspace;
}

__attribute__((visibility("default"))) const char* tinyvim_cross_scan_cuda_error_string(int code) {
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

__attribute__((visibility("default"))) int tinyvim_cross_scan_cuda(
    const void* x, const void* delta, const void* Bs, const void* Cs, const float* A,
    const float* Ds, const float* delta_bias, void* y, int B, int D, int H, int W, int N,
    int dtype, void* workspace, size_t workspace_bytes, void* stream) {
    if (!dtype_ok(dtype) || state_capacity(N) == 0) return cudaErrorNotSupported;
    if (B < 0 || D < 1 || H < 1 || W < 1) return cudaErrorInvalidValue;
    // Index arithmetic inside a (batch) slice is size_t, but positions and channels are
    // int: refuse shapes whose per-item sizes overflow int.
    if (static_cast<long long>(H) * W > INT_MAX / 4 ||
        static_cast<long long>(4) * D * H * W > INT_MAX)
        return cudaErrorInvalidValue;
    if (B == 0) return cudaSuccess;
    if (!x || !delta || !Bs || !Cs || !A || !Ds || !delta_bias || !y) return cudaErrorInvalidValue;
    const Plan plan = make_plan(B, D, H, W, N);
    if (plan.workspace > 0 && (workspace == nullptr || workspace_bytes < plan.workspace))
        return cudaErrorInvalidValue;
    float* ws = plan.workspace > 0 ? static_cast<float*>(workspace) : nullptr;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case tinyvim::scan::kF32:
            return dispatch_state<float>(plan, x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, ws, s);
        case tinyvim::scan::kF16:
            return dispatch_state<__half>(plan, x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, ws, s);
        default:
            return dispatch_state<__nv_bfloat16>(plan, x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, ws, s);
    }
}

}  // extern "C"
