// Fast CPU cross selective scan (see cross_scan_cpu_fast.h for the ABI).
//
// Work split: one task per (batch, direction). A task
//   1. reads its direction's delta rows (D x L, contiguous along L), adds the bias and
//      takes the softplus there (contiguous, so it vectorises), and transposes dt and x to
//      channels-last (L x D) float32 buffers, converting fp16/bf16 on the way;
//   2. walks the L steps in the direction's order; at each step the N values of B and C
//      are scalars shared by all channels, and the recurrence
//          s[n][d] <- exp(dt[d] A[d][n]) s[n][d] + dt[d] u[d] B[n],  y[d] += C[n] s[n][d]
//      is a contiguous loop over d (state and A stored n-major, N x D), which the compiler
//      vectorises;
//   3. writes its contribution (L x D) to a buffer of its own.
// A second pass sums the four directions in the order k = 0..3 and transposes back to
// (D, L): no shared writes, so the result is the same for any thread count.
//
// The hot loops are compiled twice (GCC/Clang target_clones): a generic x86-64 version and
// an x86-64-v3 (AVX2 + FMA) one, picked at load time from the CPU, so the one library runs
// on any x86-64 and is fast where AVX2 is. exp and log1p are our own polynomials (libm's
// are calls the vectoriser cannot inline), accurate to ~2 ulp over the ranges used.
#include "cross_scan_cpu_fast.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "scan_step.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(TINYVIM_NO_CLONES)
#define TV_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define TV_CLONES
#endif

namespace {

using tinyvim::scan::scan_position;

// ---------------------------------------------------------------- element conversions
inline float f32_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t bits_f32(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return f32_bits(static_cast<uint32_t>(h) << 16); }
inline uint16_t f32_to_bf16(float f) {            // round to nearest even; NaN stays NaN
    uint32_t u = bits_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return f32_bits(sign | 0x7f800000u | (mant << 13));        // inf / NaN
    if (exp == 0) {
        if (mant == 0) return f32_bits(sign);                                    // +-0
        // subnormal: value = mant * 2^-24, exact in float32
        const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return f32_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {             // round to nearest even, overflow -> inf
    const uint32_t u = bits_f32(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);          // NaN
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);         // >= 65520: inf
    if (a < 0x38800000u) {                                                       // below 2^-14: subnormal
        // value in units of 2^-24, rounded to nearest even by the float addition itself
        const float v = f32_bits(a) + 0.5f;   // 0.5 = 2^-1: aligns the ulp to 2^-24 * 2^23
        return static_cast<uint16_t>(sign | (bits_f32(v) - bits_f32(0.5f)));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                                  // RNE on bit 13
    return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

template <int DT> struct IO;
template <> struct IO<tinyvim::scan::kF32> {
    using T = float;
    static float load(T v) { return v; }
    static T store(float v) { return v; }
};
template <> struct IO<tinyvim::scan::kF16> {
    using T = uint16_t;
    static float load(T v) { return f16_to_f32(v); }
    static T store(float v) { return f32_to_f16(v); }
};
template <> struct IO<tinyvim::scan::kBF16> {
    using T = uint16_t;
    static float load(T v) { return bf16_to_f32(v); }
    static T store(float v) { return f32_to_bf16(v); }
};

// ---------------------------------------------------------------- vectorisable math
// exp(v) for v <= 0 (dt >= 0, A < 0; clamped anyway): 2^n * p(r), r = v - n ln2 in
// [-ln2/2, ln2/2], p the degree-6 Taylor polynomial (error < 2e-8 relative there).
// n is rounded with the 1.5*2^23 trick (no rounding instruction needed on plain SSE2).
inline float exp_neg(float v) {
    v = v < -87.0f ? -87.0f : v;
    v = v > 0.0f ? 0.0f : v;
    const float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (v - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &e, 4);
    return p * scale;
}

// softplus(v) = max(v, 0) + log1p(exp(-|v|)). With e = exp(-|v|) in (0, 1],
// log1p(e) = 2 atanh(z), z = e / (2 + e) in (0, 1/3]: the odd series in z converges as
// (1/9)^k, so eight terms reach float precision.
inline float softplus_fast(float v) {
    const float av = v < 0.0f ? -v : v;
    const float e = exp_neg(-av);
    const float z = e / (2.0f + e);
    const float z2 = z * z;
    float q = 1.0f / 15.0f;
    q = q * z2 + 1.0f / 13.0f;
    q = q * z2 + 1.0f / 11.0f;
    q = q * z2 + 1.0f / 9.0f;
    q = q * z2 + 1.0f / 7.0f;
    q = q * z2 + 1.0f / 5.0f;
    q = q * z2 + 1.0f / 3.0f;
    q = q * z2 + 1.0f;
    return (v > 0.0f ? v : 0.0f) + 2.0f * z * q;
}

// dt = softplus(delta + bias) over one contiguous row.
TV_CLONES void softplus_row(const float* in, float bias, float* out, int n) {
    for (int i = 0; i < n; ++i) out[i] = softplus_fast(in[i] + bias);
}

// The recurrence over the L steps of one (batch, direction), channels-last.
//   u, dt: (L, D) by position; Bk, Ck: (N, L) by position; AT: (N, D); dskip: (D)
//   s: (N, D) scratch state; out: (L, D) by position.
TV_CLONES void scan_direction(const float* __restrict u, const float* __restrict dt, const float* __restrict Bk,
                              const float* __restrict Ck, const float* __restrict AT,
                              const float* __restrict dskip, float* __restrict s, float* __restrict out,
                              int k, int D, int H, int W, int N) {
    const int L = H * W;
    std::fill(s, s + static_cast<size_t>(N) * D, 0.0f);
    for (int t = 0; t < L; ++t) {
        const int p = scan_position(k, t, H, W);
        const float* up = u + static_cast<size_t>(p) * D;
        const float* dp = dt + static_cast<size_t>(p) * D;
        float* yp = out + static_cast<size_t>(p) * D;
        for (int d = 0; d < D; ++d) yp[d] = dskip[d] * up[d];
        for (int n = 0; n < N; ++n) {
            const float bn = Bk[static_cast<size_t>(n) * L + p];
            const float cn = Ck[static_cast<size_t>(n) * L + p];
            const float* an = AT + static_cast<size_t>(n) * D;
            float* sn = s + static_cast<size_t>(n) * D;
            for (int d = 0; d < D; ++d) {
                const float st = exp_neg(dp[d] * an[d]) * sn[d] + dp[d] * up[d] * bn;
                sn[d] = st;
                yp[d] += cn * st;
            }
        }
    }
}

// y[d][p] = sum_k parts[k][p][d] for positions [p0, p1), k in order 0..3.
TV_CLONES void sum_directions(const float* parts, float* yT, int D, int L, int p0, int p1) {
    const size_t stride = static_cast<size_t>(L) * D;
    for (int p = p0; p < p1; ++p) {
        const size_t o = static_cast<size_t>(p) * D;
        float* row = yT + static_cast<size_t>(p - p0) * D;
        for (int d = 0; d < D; ++d)
            row[d] = ((parts[o + d] + parts[stride + o + d]) + parts[2 * stride + o + d]) + parts[3 * stride + o + d];
    }
}

// (rows, cols) -> (cols, rows), converting to float, in tiles that stay in cache.
template <typename Load, typename T>
void transpose_in(const T* src, float* dst, int rows, int cols) {
    constexpr int kTile = 32;
    for (int r0 = 0; r0 < rows; r0 += kTile)
        for (int c0 = 0; c0 < cols; c0 += kTile)
            for (int r = r0; r < std::min(rows, r0 + kTile); ++r)
                for (int c = c0; c < std::min(cols, c0 + kTile); ++c)
                    dst[static_cast<size_t>(c) * rows + r] = Load::load(src[static_cast<size_t>(r) * cols + c]);
}

// Runs fn(i) for i in [0, count) on `threads` threads, task i on thread i % threads.
// Returns false when a task ran out of memory (an exception must not leave a thread).
template <typename Fn>
bool parallel_for(int count, int threads, Fn fn) {
    threads = std::max(1, std::min(threads, count));
    std::atomic<bool> ok{true};
    auto stripe = [&](int first) {
        try {
            for (int i = first; i < count && ok.load(std::memory_order_relaxed); i += threads) fn(i);
        } catch (const std::bad_alloc&) {
            ok = false;
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < threads; ++w) {
        try {
            pool.emplace_back(stripe, w);
        } catch (const std::system_error&) {   // no more threads: this one does the stripe
            stripe(w);
        }
    }
    stripe(0);
    for (auto& th : pool) th.join();
    return ok;
}

template <int DT>
int run(const void* xv, const void* deltav, const void* Bsv, const void* Csv, const float* A,
        const float* Ds, const float* bias, void* yv, int B, int D, int H, int W, int N, int threads) {
    using T = typename IO<DT>::T;
    const T* x = static_cast<const T*>(xv);
    const T* delta = static_cast<const T*>(deltav);
    const T* Bs = static_cast<const T*>(Bsv);
    const T* Cs = static_cast<const T*>(Csv);
    T* y = static_cast<T*>(yv);
    const int L = H * W;
    const size_t LD = static_cast<size_t>(L) * D;
    // Per direction, A transposed to (N, D) and Ds; shared read-only by the tasks.
    std::vector<float> AT(static_cast<size_t>(4) * N * D), dskip(static_cast<size_t>(4) * D);
    for (int k = 0; k < 4; ++k)
        for (int d = 0; d < D; ++d) {
            const int c = k * D + d;
            dskip[static_cast<size_t>(k) * D + d] = Ds[c];
            for (int n = 0; n < N; ++n)
                AT[(static_cast<size_t>(k) * N + n) * D + d] = A[static_cast<size_t>(c) * N + n];
        }
    std::vector<float> parts(static_cast<size_t>(B) * 4 * LD);   // (B, 4, L, D)
    const bool scanned = parallel_for(B * 4, threads, [&](int task) {
        const int b = task / 4, k = task % 4;
        std::vector<float> u(LD), dt(LD), rows(LD), bc(static_cast<size_t>(2) * N * L),
            s(static_cast<size_t>(N) * D);
        transpose_in<IO<DT>>(x + static_cast<size_t>(b) * LD, u.data(), D, L);
        const T* drows = delta + (static_cast<size_t>(b) * 4 + k) * LD;
        std::vector<float> row(L);
        for (int d = 0; d < D; ++d) {
            for (int p = 0; p < L; ++p) row[p] = IO<DT>::load(drows[static_cast<size_t>(d) * L + p]);
            softplus_row(row.data(), bias[k * D + d], rows.data() + static_cast<size_t>(d) * L, L);
        }
        transpose_in<IO<tinyvim::scan::kF32>>(rows.data(), dt.data(), D, L);
        const size_t NL = static_cast<size_t>(N) * L;
        const T* bsrc = Bs + (static_cast<size_t>(b) * 4 + k) * NL;
        const T* csrc = Cs + (static_cast<size_t>(b) * 4 + k) * NL;
        for (size_t i = 0; i < NL; ++i) {
            bc[i] = IO<DT>::load(bsrc[i]);
            bc[NL + i] = IO<DT>::load(csrc[i]);
        }
        scan_direction(u.data(), dt.data(), bc.data(), bc.data() + NL, AT.data() + static_cast<size_t>(k) * N * D,
                       dskip.data() + static_cast<size_t>(k) * D, s.data(),
                       parts.data() + static_cast<size_t>(task) * LD, k, D, H, W, N);
    });
    if (!scanned) return kFastNoMemory;
    // Sum the directions and transpose back, in position blocks so that the work splits
    // across threads at batch 1 too.
    constexpr int kBlock = 64;
    const int blocks = (L + kBlock - 1) / kBlock;
    const bool summed = parallel_for(B * blocks, threads, [&](int task) {
        const int b = task / blocks, p0 = (task % blocks) * kBlock, p1 = std::min(L, p0 + kBlock);
        std::vector<float> yT(static_cast<size_t>(p1 - p0) * D);
        sum_directions(parts.data() + static_cast<size_t>(b) * 4 * LD, yT.data(), D, L, p0, p1);
        T* yb = y + static_cast<size_t>(b) * LD;
        for (int d = 0; d < D; ++d)
            for (int p = p0; p < p1; ++p)
                yb[static_cast<size_t>(d) * L + p] = IO<DT>::store(yT[static_cast<size_t>(p - p0) * D + d]);
    });
    return summed ? kFastOk : kFastNoMemory;
}

// The clone the loader picks: the same test as target_clones' resolver (an x86-64-v3 CPU).
const char* isa_name() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(TINYVIM_NO_CLONES)
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3" : "generic";
#else
    return "generic";
#endif
}

}  // namespace

// State updates (one exp, two fmas each) worth a thread of their own.
constexpr long long kUpdatesPerThread = 200000;

extern "C" {

__attribute__((visibility("default"))) int tinyvim_cross_scan_fast_abi_version(void) { return 1; }

__attribute__((visibility("default"))) const char* tinyvim_cross_scan_fast_isa(void) { return isa_name(); }

__attribute__((visibility("default"))) const char* tinyvim_cross_scan_fast_error_string(int code) {
    switch (code) {
        case kFastOk: return "ok";
        case kFastBadShape: return "invalid shape: B, D, H, W must be >= 1";
        case kFastBadState: return "unsupported d_state: N must be in 1..16";
        case kFastBadDType: return "unsupported dtype: float32 (0), float16 (1) or bfloat16 (2)";
        case kFastNullPointer: return "null pointer argument";
        case kFastNoMemory: return "out of memory for the scan's work buffers";
        default: return "unknown error";
    }
}

__attribute__((visibility("default"))) int tinyvim_cross_scan_fast(
    const void* x, const void* delta, const void* Bs, const void* Cs, const float* A, const float* Ds,
    const float* delta_bias, void* y, int B, int D, int H, int W, int N, int dtype, int threads) {
    if (B < 1 || D < 1 || H < 1 || W < 1) return kFastBadShape;
    if (N < 1 || N > tinyvim::scan::kMaxState) return kFastBadState;
    if (!x || !delta || !Bs || !Cs || !A || !Ds || !delta_bias || !y) return kFastNullPointer;
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Starting a thread costs ~20-50 us, the time of ~50k state updates: small scans (TinyViM's
    // run on 7x7 maps at 224) stay on fewer threads. The result does not depend on the count.
    const long long updates = 4LL * B * H * W * D * N;
    threads = static_cast<int>(std::min<long long>(threads, std::max(1LL, updates / kUpdatesPerThread)));
    try {
        switch (dtype) {
            case tinyvim::scan::kF32:
                return run<tinyvim::scan::kF32>(x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, threads);
            case tinyvim::scan::kF16:
                return run<tinyvim::scan::kF16>(x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, threads);
            case tinyvim::scan::kBF16:
                return run<tinyvim::scan::kBF16>(x, delta, Bs, Cs, A, Ds, delta_bias, y, B, D, H, W, N, threads);
            default: return kFastBadDType;
        }
    } catch (const std::bad_alloc&) {
        return kFastNoMemory;
    }
}

}  // extern "C"
