/* C ABI of the tinyvim scan libraries (libtinyvim_scan_cuda.so, libtinyvim_scan_cpu.so).
 * Plain C, no CUDA or TensorRT headers: included by the TensorRT plugin and mirrored by
 * the ctypes wrappers in tinyvim/plugins/.
 *
 * Tensors are contiguous: x (B,D,H,W), delta (B,4D,H,W), Bs/Cs (B,4,N,H,W) in `dtype`;
 * A (4D,N), Ds (4D), delta_bias (4D) in float32; y (B,D,H,W) in `dtype`.
 * dtype: 0 float32, 1 float16, 2 bfloat16 (3 float64: CPU twin only).
 */
#ifndef TINYVIM_SCAN_H_
#define TINYVIM_SCAN_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TINYVIM_SCAN_ABI_VERSION 1
#define TINYVIM_SCAN_MAX_STATE 16

/* Bytes of device scratch memory the CUDA entry needs for this shape (0 for the
 * shapes of the model: the accumulator then fits in shared memory). */
size_t tinyvim_cross_scan_cuda_workspace_size(int B, int D, int H, int W, int N, int dtype);

/* 1 if (N, dtype) is supported by the CUDA entry, else 0. */
int tinyvim_cross_scan_cuda_supports(int N, int dtype);

/* Launches on `stream` (a cudaStream_t; NULL = legacy default stream) and returns a
 * cudaError_t value: 0 success, 1 (cudaErrorInvalidValue) bad shape/pointer/workspace,
 * 801 (cudaErrorNotSupported) unsupported N or dtype, else the launch error. */
int tinyvim_cross_scan_cuda(const void* x, const void* delta, const void* Bs, const void* Cs,
                            const float* A, const float* Ds, const float* delta_bias, void* y,
                            int B, int D, int H, int W, int N, int dtype, void* workspace,
                            size_t workspace_bytes, void* stream);

/* cudaGetErrorString of a code returned above. */
const char* tinyvim_cross_scan_cuda_error_string(int code);

int tinyvim_cross_scan_cuda_abi_version(void);

/* CPU twin (float32 / float64, all inputs in that dtype); 0 on success. */
int tinyvim_cross_scan_cpu(const void* x, const void* delta, const void* Bs, const void* Cs,
                           const void* A, const void* Ds, const void* delta_bias, void* y,
                           int B, int D, int H, int W, int N, int dtype);
const char* tinyvim_cross_scan_cpu_error_string(int code);
int tinyvim_cross_scan_cpu_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* TINYVIM_SCAN_H_ */
