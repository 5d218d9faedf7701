// CUDA kernel of the cross selective scan (op contract: tinyvim/ops/scan.py).
//
// Work decomposition: one thread per (batch, channel d); a block holds CB consecutive
// channels of one batch element. Each thread runs the FOUR directions of its channel
// together, step by step (t outer, k = 0..3 inner), reading the natural (h, w) layout
// through scan_position() -- no materialised copies of the four orders.
//
// Why one thread for all four directions (rather than one thread per direction):
//  * Determinism without float atomics or a per-direction partial buffer: all four
//    contributions to y[b, d, p] come from the same thread, added in a fixed order (that
//    of the steps at which each direction visits p) into the thread's own fp32
//    accumulator column. The result is bit-reproducible run to run, and the CPU twin,
//    which loops in the same order, reproduces it up to libm ulps.
//  * 4 independent recurrences per thread give 4x instruction-level parallelism on the
//    exp/fma dependency chain, which is what bounds a sequential scan of 49 steps.
//  * Memory traffic stays at the minimum: x and delta are read once, y written once;
//    a per-direction fp32 partial buffer would add 32 bytes per (b, d, position).
//
// B and C of a step are the same for every channel of a direction: they are staged once
// per block into shared memory (fp32, for a chunk of steps at a time, broadcast reads).
// The fp32 accumulator of y lives in shared memory, padded to CB+1 columns so that both
// the per-thread updates (consecutive lanes = consecutive channels) and the final
// coalesced write-out (consecutive lanes = consecutive positions) are free of bank
// conflicts. For long sequences whose accumulator would not fit (L > ~300), it lives in a
// caller-provided global workspace instead (same code, through a generic pointer).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "scan_step.h"

namespace tinyvim {
namespace scan {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

constexpr int kMaxBlock = 128;

// Steps of B/C staged per __syncthreads pair: 8 KiB of shared memory for either capacity.
template <int NT> __host__ __device__ constexpr int bc_chunk() { return 256 / NT; }

// smem layout: [bc: chunk x 4 dirs x {B, C} x NT floats][acc: L x (CB+1) floats, unless
// ws != nullptr]. ws, when given, is an fp32 (B, D, L) accumulator (no init needed).
template <int NT, typename T>
__global__ void __launch_bounds__(kMaxBlock)
cross_scan_kernel(const T* __restrict__ x, const T* __restrict__ delta, const T* __restrict__ Bs,
                  const T* __restrict__ Cs, const float* __restrict__ A,
                  const float* __restrict__ Ds, const float* __restrict__ bias,
                  T* __restrict__ y, float* __restrict__ ws, int D, int H, int W, int N) {
    extern __shared__ float smem[];
    constexpr int kChunk = bc_chunk<NT>();
    const int CB = blockDim.x;
    const int b = blockIdx.y;
    const int d0 = blockIdx.x * CB;
    const int dl = threadIdx.x;
    const int d = d0 + dl;
    const bool active = d < D;
    const int L = H * W;

    float* bc = smem;
    float* acc;
    int acc_ps, acc_ds;   // acc element of (position p, local channel r): acc[p*acc_ps + r*acc_ds]
    if (ws == nullptr) {
        acc = smem + kChunk * 8 * NT;
        acc_ps = CB + 1;
        acc_ds = 1;
    } else {
        acc = ws + (static_cast<size_t>(b) * D + d0) * L;
        acc_ps = 1;
        acc_ds = L;
    }

    float s[4][NT];
    float a[4][NT];
    float dskip[4], dbias[4];
    const T* drow[4];
    const T* xrow = x + (static_cast<size_t>(b) * D + d) * L;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int c = k * D + (active ? d : 0);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            s[k][n] = 0.f;
            a[k][n] = n < N ? A[static_cast<size_t>(c) * N + n] : 0.f;   // zero-pad to NT
        }
        dskip[k] = Ds[c];
        dbias[k] = bias[c];
        drow[k] = delta + ((static_cast<size_t>(b) * 4 + k) * D + d) * L;
    }
    if (active)
        for (int p = 0; p < L; ++p) acc[p * acc_ps + dl * acc_ds] = 0.f;

    for (int t0 = 0; t0 < L; t0 += kChunk) {
        const int steps = min(kChunk, L - t0);
        __syncthreads();   // every thread is done with the previous chunk's B/C
        for (int i = threadIdx.x; i < steps * 8 * NT; i += CB) {
            const int n = i % NT;
            const int r = i / NT;          // ((tt * 4 + k) * 2 + which)
            const int which = r & 1;
            const int k = (r >> 1) & 3;
            const int tt = r >> 3;
            float v = 0.f;
            if (n < N) {
                const int p = scan_position(k, t0 + tt, H, W);
                const T* src = which ? Cs : Bs;
                v = to_float(src[((static_cast<size_t>(b) * 4 + k) * N + n) * L + p]);
            }
            bc[i] = v;
        }
        __syncthreads();
        if (active) {
            for (int tt = 0; tt < steps; ++tt) {
                const int t = t0 + tt;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int p = scan_position(k, t, H, W);
                    const float dt = softplus(to_float(drow[k][p]) + dbias[k]);
                    const float* Bt = bc + (tt * 4 + k) * 2 * NT;
                    const float yk = scan_step<NT, float>(s[k], a[k], Bt, Bt + NT, dt,
                                                          to_float(xrow[p]), dskip[k]);
                    float& slot = acc[p * acc_ps + dl * acc_ds];
                    slot = slot + yk;
                }
            }
        }
    }
    __syncthreads();
    // Coalesced write-out: consecutive threads take consecutive positions of a channel.
    const int rows = min(CB, D - d0);
    T* yblk = y + (static_cast<size_t>(b) * D + d0) * L;
    for (int i = threadIdx.x; i < rows * L; i += CB) {
        const int r = i / L;
        const int p = i - r * L;
        yblk[i] = from_float<T>(acc[p * acc_ps + r * acc_ds]);
    }
}

}  // namespace scan
}  // namespace tinyvim
