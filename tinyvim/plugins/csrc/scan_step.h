// The cross selective scan's arithmetic, shared verbatim by the CUDA kernel and the
// CPU twin (g++), so that the twin tested in CI runs the very same operations as the
// GPU: same index arithmetic for the four scan orders, same softplus, same recurrence
// step, same operation order. Only the libm implementations of expf/log1pf differ
// (CUDA's and glibc's are both within 2 ulp).
//
// No TensorRT, no CUDA runtime: this header compiles as plain C++17.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define TV_HD __host__ __device__ __forceinline__
#else
#define TV_HD inline
#endif
// Unrolling the state loop keeps the state in registers. nvcc's host pass hands code to
// g++, which rejects `#pragma unroll`, while nvcc's front end rejects `GCC unroll`: the
// host pass of a .cu file gets neither (it never runs this code in a hot loop).
#if defined(__CUDA_ARCH__)
#define TV_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define TV_UNROLL
#else
#define TV_UNROLL _Pragma("GCC unroll 16")
#endif

namespace tinyvim {
namespace scan {

// Largest d_state the kernels accept: the state lives in registers (4 directions x N
// floats per thread), and 16 keeps that under ~100 registers.
constexpr int kMaxState = 16;

// The state size is a compile-time capacity: 8 or 16. A smaller runtime d_state runs in
// the next capacity up with A, B and C zero-padded: a padded state stays exactly 0
// (exp(0)*0 + dt*u*0) and adds exactly +0 to y, so the result is bit-identical to an
// exact-N kernel, at the price of two instantiations instead of sixteen.
TV_HD constexpr int state_capacity(int n) { return n <= 0 ? 0 : n <= 8 ? 8 : n <= kMaxState ? 16 : 0; }

// I/O element types, shared by the C ABI, the plugin and the Python wrappers.
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 /* CPU twin only */ };

// Precision-generic math so that one step function serves float (GPU, twin) and double
// (twin only). Explicit fma everywhere: nvcc contracts a*b+c by default and g++ on
// x86-64 does not, so writing the fused operations by hand is what makes the CUDA and
// CPU results agree to the last bit apart from exp/log1p.
TV_HD float tv_exp(float v) { return expf(v); }
TV_HD double tv_exp(double v) { return exp(v); }
TV_HD float tv_log1p(float v) { return log1pf(v); }
TV_HD double tv_log1p(double v) { return log1p(v); }
TV_HD float tv_fma(float a, float b, float c) { return fmaf(a, b, c); }
TV_HD double tv_fma(double a, double b, double c) { return fma(a, b, c); }
TV_HD float tv_abs(float v) { return fabsf(v); }
TV_HD double tv_abs(double v) { return fabs(v); }
template <typename R> TV_HD R tv_max0(R v) { return v > R(0) ? v : R(0); }

// softplus(v) = relu(v) + log1p(exp(-|v|)): no overflow for large v, no threshold
// branch, and the same formula as tinyvim.ops.softplus_stable.
template <typename R>
TV_HD R softplus(R v) {
    return tv_max0(v) + tv_log1p(tv_exp(-tv_abs(v)));
}

// Row-major position visited at step t (0 <= t < h*w) of direction k.
//   k=0 row-major, k=1 column-major (transpose then flatten), k=2/k=3 their reverses.
// Index arithmetic on the natural (h, w) layout: no materialised copies of the orders.
TV_HD int scan_position(int k, int t, int h, int w) {
    const int L = h * w;
    const int s = (k >= 2) ? (L - 1 - t) : t;   // reverses walk the same order backwards
    if (k & 1) {                                 // column-major: step s -> (i = s % h, j = s / h)
        const int j = s / h;
        const int i = s - j * h;
        return i * w + j;
    }
    return s;
}

// One step of the selective scan for one (batch, direction, channel):
//   s[n] <- exp(dt * A[n]) * s[n] + dt * B[n] * u
//   returns  sum_n C[n] * s[n] + Dskip * u
// dt is already softplus(delta + delta_bias). B and C point at the N values of this
// step (shared memory on the GPU). The state stays in registers (N is a constant).
template <int N, typename R>
TV_HD R scan_step(R (&s)[N], const R (&A)[N], const R* B, const R* C, R dt, R u, R Dskip) {
    const R dtu = dt * u;
    R y = R(0);
TV_UNROLL
    for (int n = 0; n < N; ++n) {
        const R decay = tv_exp(dt * A[n]);
        s[n] = tv_fma(decay, s[n], dtu * B[n]);
        y = tv_fma(C[n], s[n], y);
    }
    return tv_fma(Dskip, u, y);
}

}  // namespace scan
}  // namespace tinyvim
