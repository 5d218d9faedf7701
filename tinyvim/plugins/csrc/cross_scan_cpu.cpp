// CPU twin of the CUDA cross selective scan: same shared header (scan_step.h), same
// loop structure and summation order as the kernel's threads, compiled with g++ into
// libtinyvim_scan_cpu.so. It exists so that CI (no GPU) tests the kernel's arithmetic
// and index logic against the float64 reference.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "scan_step.h"

namespace {

using tinyvim::scan::scan_position;
using tinyvim::scan::scan_step;
using tinyvim::scan::softplus;

// One (batch, channel) "thread": the four directions advance together, step by step, in
// the order k = 0..3, each adding its output to acc[p]. The kernel's thread for channel d
// does exactly this, so both sum every position's four contributions in the same order.
template <int NT, typename R>
void scan_channel(const R* x, const R* delta, const R* Bs, const R* Cs, const R* A,
                  const R* Ds, const R* bias, R* y, int b, int d, int D, int H, int W,
                  int N, R* acc, R* bc) {
    const int L = H * W;
    R s[4][NT] = {};
    R a[4][NT] = {};
    R dskip[4], dbias[4];
    for (int k = 0; k < 4; ++k) {
        const int c = k * D + d;
        for (int n = 0; n < N; ++n) a[k][n] = A[static_cast<size_t>(c) * N + n];
        dskip[k] = Ds[c];
        dbias[k] = bias[c];
    }
    const R* xrow = x + (static_cast<size_t>(b) * D + d) * L;
    for (int p = 0; p < L; ++p) acc[p] = R(0);
    for (int t = 0; t < L; ++t) {
        for (int k = 0; k < 4; ++k) {
            const int p = scan_position(k, t, H, W);
            // B and C of this step, zero-padded to the capacity NT (see scan_step.h).
            const R* Bk = Bs + (static_cast<size_t>(b) * 4 + k) * N * L;
            const R* Ck = Cs + (static_cast<size_t>(b) * 4 + k) * N * L;
            R* Bt = bc;
            R* Ct = bc + NT;
            for (int n = 0; n < NT; ++n) {
                Bt[n] = n < N ? Bk[static_cast<size_t>(n) * L + p] : R(0);
                Ct[n] = n < N ? Ck[static_cast<size_t>(n) * L + p] : R(0);
            }
            const R* drow = delta + (static_cast<size_t>(b) * 4 * D + k * D + d) * L;
            const R dt = softplus(drow[p] + dbias[k]);
            acc[p] += scan_step<NT, R>(s[k], a[k], Bt, Ct, dt, xrow[p], dskip[k]);
        }
    }
    R* yrow = y + (static_cast<size_t>(b) * D + d) * L;
    for (int p = 0; p < L; ++p) yrow[p] = acc[p];
}

template <int NT, typename R>
void scan_all(const void* x, const void* delta, const void* Bs, const void* Cs,
              const void* A, const void* Ds, const void* bias, void* y, int B, int D,
              int H, int W, int N) {
    std::vector<R> acc(static_cast<size_t>(H) * W);
    R bc[2 * NT];
    for (int b = 0; b < B; ++b)
        for (int d = 0; d < D; ++d)
            scan_channel<NT, R>(static_cast<const R*>(x), static_cast<const R*>(delta),
                                static_cast<const R*>(Bs), static_cast<const R*>(Cs),
                                static_cast<const R*>(A), static_cast<const R*>(Ds),
                                static_cast<const R*>(bias), static_cast<R*>(y), b, d, D,
                                H, W, N, acc.data(), bc);
}

template <typename R>
int dispatch_state(const void* x, const void* delta, const void* Bs, const void* Cs,
                   const void* A, const void* Ds, const void* bias, void* y, int B, int D,
                   int H, int W, int N) {
    switch (tinyvim::scan::state_capacity(N)) {
        case 8: scan_all<8, R>(x, delta, Bs, Cs, A, Ds, bias, y, B, D, H, W, N); return 0;
        case 16: scan_all<16, R>(x, delta, Bs, Cs, A, Ds, bias, y, B, D, H, W, N); return 0;
        default: return 2;
    }
}

}  // namespace

extern "C" {

// Status codes of tinyvim_cross_scan_cpu.
enum { kOk = 0, kBadShape = 1, kBadState = 2, kBadDType = 3, kNullPointer = 4 };

__attribute__((visibility("default"))) int tinyvim_cross_scan_cpu_abi_version(void) { return 1; }

__attribute__((visibility("default"))) const char* tinyvim_cross_scan_cpu_error_string(int code) {
    switch (code) {
        case kOk: return "ok";
        case kBadShape: return "invalid shape: B, D, H, W must be >= 1";
        case kBadState: return "unsupported d_state: N must be in 1..16";
        case kBadDType: return "unsupported dtype: the CPU twin takes float32 (0) or float64 (3)";
        case kNullPointer: return "null pointer argument";
        default: return "unknown error";
    }
}

// All tensors contiguous, all of the same dtype (0 = float32, 3 = float64).
// Layouts: x (B,D,H,W), delta (B,4D,H,W), Bs/Cs (B,4,N,H,W), A (4D,N), Ds/delta_bias (4D),
// y (B,D,H,W). Returns 0 or one of the codes above.
__attribute__((visibility("default"))) int tinyvim_cross_scan_cpu(
    const void* x, const void* delta, const void* Bs, const void* Cs, const void* A,
    const void* Ds, const void* delta_bias, void* y, int B, int D, int H, int W, int N,
    int dtype) {
    if (B < 1 || D < 1 || H < 1 || W < 1) return kBadShape;
    if (tinyvim::scan::state_capacity(N) == 0) return kBadState;
    if (!x || !delta || !Bs || !Cs || !A || !Ds || !delta_bias || !y) return kNullPointer;
    if (dtype == tinyvim::scan::kF32)
        return dispatch_state<float>(x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N);
    if (dtype == tinyvim::scan::kF64)
        return dispatch_state<double>(x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N);
    return kBadDType;
}

}  // extern "C"
