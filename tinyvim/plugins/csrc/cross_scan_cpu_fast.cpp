// Fast CPU cross selective scan (see cross_scan_cpu_fast.h for the ABI).
//
// Work split: one task per (batch, direction). A task
//   1. transposes x and its direction's delta rows (D x L) to channels-last (L x Dp) float32
//      buffers, Dp = D rounded up to 8 (zero padding), converting fp16/bf16 on the way, and
//      takes dt = softplus(delta + bias) there;
//   2. walks the L steps in the direction's order, 8 channels at a time, with the states of
//      those 8 channels (N of them, zero-padded to 8 or 16) in registers for the whole walk:
//          s[n] <- 2^(dt A2[n]) s[n] + dt u B[n],  y = Ds u + sum_n C[n] s[n]   (A2 = A log2 e)
//      B[n] and C[n] of a step are scalars shared by the 8 channels;
//   3. writes its contribution (L x Dp) to a buffer of its own.
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
#include <memory>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "scan_step.h"

#ifdef TINYVIM_SCAN_TBB
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#endif

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

// ---------------------------------------------------------------- 8-lane vectors
// GCC/Clang vector extensions: each clone compiles them to its ISA (one ymm register on
// x86-64-v3, two xmm on the generic x86-64). Internal functions only, so the ABI note GCC
// gives for 32-byte vectors without AVX does not matter here.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;

#define TV_INLINE inline __attribute__((always_inline))
TV_INLINE v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
TV_INLINE void store8(float* p, const v8f& v) { std::memcpy(p, &v, sizeof v); }
TV_INLINE v8f splat(float f) { return v8f{} + f; }
// max(a, b) that keeps a NaN in `a`: a NaN input must reach y, as in the reference
TV_INLINE v8f vmax(const v8f& a, const v8f& b) { return a < b ? b : a; }

constexpr float kLog2e = 1.44269504088896341f;

// 2^v for v <= 0: 2^n * p(r), n = round(v), r = v - n in [-1/2, 1/2] (exact), p the
// degree-6 Taylor polynomial of exp(r ln2) (relative error < 1.3e-7 there). v is clamped
// at -125 so that 2^n stays a normal float. n is rounded with the 1.5*2^23 trick (no
// rounding instruction needed on plain SSE2).
TV_INLINE v8f exp2_neg(const v8f& v_in) {
    const v8f v = vmax(v_in, splat(-125.0f));
    const v8f n = (v + 12582912.0f) - 12582912.0f;
    const v8f r = v - n;
    v8f p = splat(1.5403530393381609e-4f);   // ln2^6 / 6!
    p = p * r + 1.3333558146428443e-3f;      // ln2^5 / 5!
    p = p * r + 9.6181291076284772e-3f;      // ln2^4 / 4!
    p = p * r + 5.5504108664821580e-2f;      // ln2^3 / 3!
    p = p * r + 0.24022650695910071f;        // ln2^2 / 2!
    p = p * r + 0.69314718055994531f;        // ln2
    p = p * r + 1.0f;
    const v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8f)e;   // a vector cast between same-size types reinterprets the bits
}

// softplus(v) = max(v, 0) + log1p(exp(-|v|)). With e = exp(-|v|) in (0, 1],
// log1p(e) = 2 atanh(z), z = e / (2 + e) in (0, 1/3]: the odd series in z converges as
// (1/9)^k, so eight terms reach float precision (and keep it relative for small e).
TV_INLINE v8f softplus(const v8f& v) {
    const v8f av = v < 0.0f ? -v : v;
    const v8f e = exp2_neg(av * -kLog2e);
    const v8f z = e / (e + 2.0f);
    const v8f z2 = z * z;
    v8f q = splat(1.0f / 15.0f);
    q = q * z2 + 1.0f / 13.0f;
    q = q * z2 + 1.0f / 11.0f;
    q = q * z2 + 1.0f / 9.0f;
    q = q * z2 + 1.0f / 7.0f;
    q = q * z2 + 1.0f / 5.0f;
    q = q * z2 + 1.0f / 3.0f;
    q = q * z2 + 1.0f;
    return vmax(v, v8f{}) + 2.0f * z * q;
}

// dt = softplus(delta + bias) in place over a (rows, Dp) channels-last buffer.
TV_CLONES void softplus_rows(float* dt, const float* bias, int rows, int Dp) {
    for (int p = 0; p < rows; ++p)
        for (int c = 0; c < Dp; c += kLanes) {
            float* q = dt + static_cast<size_t>(p) * Dp + c;
            store8(q, softplus(load8(q) + load8(bias + c)));
        }
}

// The recurrence of one (batch, direction) over its L steps, 8 channels at a time with the
// NC states of those channels held in registers for the whole walk:
//   s[n] <- 2^(dt A2[n]) s[n] + dt u B[n],  y = Ds u + sum_n C[n] s[n]
//   u, dt, out: (L, Dp) by position; bc: (L, 2 NC), B then C of each position;
//   A2: (NC, Dp) = A log2(e), clamped to <= 0; dskip: (Dp).
// Padding (channels D..Dp, states N..NC) is all zeros in u, B, C, A2 and dskip: a padded
// state stays exactly 0 and adds exactly 0 to y.
template <int NC>
TV_INLINE void scan_lanes(const float* __restrict u, const float* __restrict dt, const float* __restrict bc,
                          const float* __restrict A2, const float* __restrict dskip, float* __restrict out,
                          int k, int Dp, int H, int W) {
    const int L = H * W;
    for (int c = 0; c < Dp; c += kLanes) {
        v8f s[NC];
        for (int n = 0; n < NC; ++n) s[n] = v8f{};
        const v8f ds = load8(dskip + c);
        for (int t = 0; t < L; ++t) {
            const size_t p = static_cast<size_t>(scan_position(k, t, H, W));
            const v8f uu = load8(u + p * Dp + c), dd = load8(dt + p * Dp + c);
            const v8f du = dd * uu;
            const float* bp = bc + p * 2 * NC;
            v8f y = ds * uu;
#pragma GCC unroll 16
            for (int n = 0; n < NC; ++n) {
                const v8f decay = exp2_neg(dd * load8(A2 + static_cast<size_t>(n) * Dp + c));
                s[n] = decay * s[n] + du * bp[n];
                y = y + bp[NC + n] * s[n];
            }
            store8(out + p * Dp + c, y);
        }
    }
}

TV_CLONES void scan_lanes8(const float* u, const float* dt, const float* bc, const float* A2, const float* dskip,
                           float* out, int k, int Dp, int H, int W) {
    scan_lanes<8>(u, dt, bc, A2, dskip, out, k, Dp, H, W);
}

TV_CLONES void scan_lanes16(const float* u, const float* dt, const float* bc, const float* A2, const float* dskip,
                            float* out, int k, int Dp, int H, int W) {
    scan_lanes<16>(u, dt, bc, A2, dskip, out, k, Dp, H, W);
}

// y[d][p] = sum_k parts[k][p][d] for positions [p0, p1), k in order 0..3.
TV_CLONES void sum_directions(const float* parts, float* yT, int Dp, int L, int p0, int p1) {
    const size_t stride = static_cast<size_t>(L) * Dp;
    for (int p = p0; p < p1; ++p) {
        const size_t o = static_cast<size_t>(p) * Dp;
        float* row = yT + static_cast<size_t>(p - p0) * Dp;
        for (int d = 0; d < Dp; ++d)
            row[d] = ((parts[o + d] + parts[stride + o + d]) + parts[2 * stride + o + d]) + parts[3 * stride + o + d];
    }
}

// src (rows, cols) -> dst (cols, ld), converted to float; columns rows..ld of dst (padding)
// are zeroed. Eight rows at a time: each dst row segment is one 8-lane store.
template <typename Load, typename T>
void transpose_in(const T* __restrict src, float* __restrict dst, int rows, int cols, int ld) {
    for (int r0 = 0; r0 < ld; r0 += kLanes) {
        const int n = std::min(kLanes, rows - r0);   // rows of this block that exist (may be <= 0)
        const T* s = src + static_cast<size_t>(r0) * cols;
        if (n == kLanes) {
            for (int c = 0; c < cols; ++c) {
                float v[kLanes];
                for (int j = 0; j < kLanes; ++j) v[j] = Load::load(s[static_cast<size_t>(j) * cols + c]);
                std::memcpy(dst + static_cast<size_t>(c) * ld + r0, v, sizeof v);
            }
        } else {
            for (int c = 0; c < cols; ++c) {
                float v[kLanes] = {};
                for (int j = 0; j < n; ++j) v[j] = Load::load(s[static_cast<size_t>(j) * cols + c]);
                std::memcpy(dst + static_cast<size_t>(c) * ld + r0, v, sizeof v);
            }
        }
    }
}

// Runs fn(i) for i in [0, count). Returns false when a task ran out of memory (an
// exception must not leave a worker).
#ifdef TINYVIM_SCAN_TBB
// Inside OpenVINO (the extension is built with TINYVIM_SCAN_TBB): the tasks go to the TBB
// arena the caller runs in, i.e. the CPU plugin's own worker threads. Threads of our own
// would be started per call and would compete for the cores with OpenVINO's idle workers,
// which spin while the op runs (measured: the five scans of TinyViM-S at batch 8 took
// 10-12 ms inside OpenVINO that way, ~7 ms on its arena). `threads` is the arena's business.
template <typename Fn>
bool parallel_for(int count, int /*threads*/, Fn fn) {
    std::atomic<bool> ok{true};
    tbb::parallel_for(tbb::blocked_range<int>(0, count, 1), [&](const tbb::blocked_range<int>& r) {
        try {
            for (int i = r.begin(); i < r.end() && ok.load(std::memory_order_relaxed); ++i) fn(i);
        } catch (const std::bad_alloc&) {
            ok = false;
        }
    });
    return ok;
}
#else
// On threads of our own (ctypes / ONNX Runtime route): fn(i) on thread i % threads.
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
#endif

template <typename T> std::unique_ptr<T[]> uninitialised(size_t n) { return std::unique_ptr<T[]>(new T[n]); }

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
    const int NC = tinyvim::scan::state_capacity(N);        // states held per channel (zero-padded)
    const int Dp = (D + kLanes - 1) / kLanes * kLanes;      // channels padded to whole vectors
    const size_t LD = static_cast<size_t>(L) * D, LDp = static_cast<size_t>(L) * Dp;
    // Per direction: A log2(e) as (NC, Dp), clamped to <= 0 (dt >= 0, so 2^(dt A2) <= 1), Ds
    // and delta_bias as (Dp); zero-padded. Shared read-only by the tasks.
    std::vector<float> A2(static_cast<size_t>(4) * NC * Dp, 0.0f), dskip(static_cast<size_t>(4) * Dp, 0.0f),
        dbias(static_cast<size_t>(4) * Dp, 0.0f);
    for (int k = 0; k < 4; ++k)
        for (int d = 0; d < D; ++d) {
            const int c = k * D + d;
            dskip[static_cast<size_t>(k) * Dp + d] = Ds[c];
            dbias[static_cast<size_t>(k) * Dp + d] = bias[c];
            for (int n = 0; n < N; ++n)
                A2[(static_cast<size_t>(k) * NC + n) * Dp + d] = std::min(A[static_cast<size_t>(c) * N + n], 0.0f) * kLog2e;
        }
    auto parts = uninitialised<float>(static_cast<size_t>(B) * 4 * LDp);   // (B, 4, L, Dp)
    const bool scanned = parallel_for(B * 4, threads, [&](int task) {
        const int b = task / 4, k = task % 4;
        auto u = uninitialised<float>(LDp), dt = uninitialised<float>(LDp);
        std::vector<float> bc(static_cast<size_t>(L) * 2 * NC, 0.0f);
        transpose_in<IO<DT>>(x + static_cast<size_t>(b) * LD, u.get(), D, L, Dp);
        transpose_in<IO<DT>>(delta + (static_cast<size_t>(b) * 4 + k) * LD, dt.get(), D, L, Dp);
        softplus_rows(dt.get(), dbias.data() + static_cast<size_t>(k) * Dp, L, Dp);
        const size_t NL = static_cast<size_t>(N) * L;
        const T* bsrc = Bs + (static_cast<size_t>(b) * 4 + k) * NL;
        const T* csrc = Cs + (static_cast<size_t>(b) * 4 + k) * NL;
        for (int n = 0; n < N; ++n)
            for (int p = 0; p < L; ++p) {
                bc[static_cast<size_t>(p) * 2 * NC + n] = IO<DT>::load(bsrc[static_cast<size_t>(n) * L + p]);
                bc[static_cast<size_t>(p) * 2 * NC + NC + n] = IO<DT>::load(csrc[static_cast<size_t>(n) * L + p]);
            }
        const float* a2 = A2.data() + static_cast<size_t>(k) * NC * Dp;
        const float* ds = dskip.data() + static_cast<size_t>(k) * Dp;
        float* out = parts.get() + static_cast<size_t>(task) * LDp;
        if (NC == 8)
            scan_lanes8(u.get(), dt.get(), bc.data(), a2, ds, out, k, Dp, H, W);
        else
            scan_lanes16(u.get(), dt.get(), bc.data(), a2, ds, out, k, Dp, H, W);
    });
    if (!scanned) return kFastNoMemory;
    // Sum the directions and transpose back, in position blocks so that the work splits
    // across threads at batch 1 too.
    constexpr int kBlock = 64;
    const int blocks = (L + kBlock - 1) / kBlock;
    const bool summed = parallel_for(B * blocks, threads, [&](int task) {
        const int b = task / blocks, p0 = (task % blocks) * kBlock, p1 = std::min(L, p0 + kBlock);
        auto yT = uninitialised<float>(static_cast<size_t>(p1 - p0) * Dp);
        sum_directions(parts.get() + static_cast<size_t>(b) * 4 * LDp, yT.get(), Dp, L, p0, p1);
        T* yb = y + static_cast<size_t>(b) * LD;
        for (int d = 0; d < D; ++d)
            for (int p = p0; p < p1; ++p)
                yb[static_cast<size_t>(d) * L + p] = IO<DT>::store(yT[static_cast<size_t>(p - p0) * Dp + d]);
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

__attribute__((visibility("default"))) const char* tinyvim_cross_scan_fast_threading(void) {
#ifdef TINYVIM_SCAN_TBB
    return "tbb";
#else
    return "threads";
#endif
}

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
