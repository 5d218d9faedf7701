// The fast CPU cross selective scan: the C ABI shared by the ctypes wrapper
// (tinyvim.plugins.cpu_fast, behind ONNX Runtime's custom op) and the OpenVINO extension
// (ov_extension.cpp), so that both run the very same compiled kernel.
//
// Unlike the twin (cross_scan_cpu.cpp, the kernel's arithmetic in the kernel's order, the
// reference), this one is built for speed: channels-last buffers so that the per-channel
// recurrence is a contiguous loop the compiler vectorises, a polynomial exp/log1p that
// vectorises too, and one thread per (batch, direction). The state is float32 whatever
// the I/O type.
//
// Built two ways from the one source: on threads of its own (the library behind the ctypes
// wrapper and ONNX Runtime's custom op), and with TINYVIM_SCAN_TBB defined (the OpenVINO
// extension), where its tasks run on the TBB arena of the caller, i.e. OpenVINO's own workers.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// Status codes (0 = ok); tinyvim_cross_scan_fast_error_string names them.
enum { kFastOk = 0, kFastBadShape = 1, kFastBadState = 2, kFastBadDType = 3, kFastNullPointer = 4,
       kFastNoMemory = 5 };

// x (B,D,H,W), delta (B,4D,H,W), Bs/Cs (B,4,N,H,W), y (B,D,H,W): contiguous, all of `dtype`
// (0 float32, 1 float16, 2 bfloat16, as tinyvim::scan::DType); A (4D,N), Ds and delta_bias
// (4D): contiguous float32. N in 1..16. threads <= 0: one per hardware thread; ignored in
// the TBB build (the caller's arena decides). The result
// does not depend on the thread count (every (batch, direction) has its own buffer and the
// four directions are summed in the order k = 0..3).
int tinyvim_cross_scan_fast(const void* x, const void* delta, const void* Bs, const void* Cs,
                            const float* A, const float* Ds, const float* delta_bias, void* y,
                            int B, int D, int H, int W, int N, int dtype, int threads);
const char* tinyvim_cross_scan_fast_error_string(int code);
int tinyvim_cross_scan_fast_abi_version(void);
// Which code path the CPU dispatch picked: "x86-64-v3" (AVX2+FMA) or "generic".
const char* tinyvim_cross_scan_fast_isa(void);
// How its tasks run: "threads" (threads of its own) or "tbb" (the caller's TBB arena).
const char* tinyvim_cross_scan_fast_threading(void);

#ifdef __cplusplus
}
#endif
