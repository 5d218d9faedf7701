// CUDA's runtime types and error codes as the CPU build sees them (tests/cuda_on_cpu): what
// TensorRT's headers and the plugin need from <cuda_runtime_api.h>, with CUDA's own numeric error
// values (the scan's C ABI returns them, and the tests compare them), and the C entry points of
// the CPU runtime that tests call (counters, guard-paged device buffers).
// Plain C++: the TensorRT plugin's translation unit includes this and nothing heavier.
#pragma once

#include <cstddef>
#include <cstdint>

// Opaque handles, as in CUDA: the CPU run executes every launch synchronously and treats a
// stream only as a token (recorded, so a test can see which stream a launch was given).
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
};
typedef enum cudaError cudaError_t;

extern "C" {
// What the CPU runtime has seen since load (or the last reset): filled into out[0..n), returns
// how many counters there are.
//   0 launches, 1 largest block (threads), 2 largest gridDim.x, 3 largest gridDim.y,
//   4 largest dynamic shared memory (bytes), 5 last stream token, 6 shared-memory overruns,
//   7 refused launches (limits), 8 blocks run, 9 divergent barriers (threads of a block waiting
//   at different __syncthreads calls).
int tinyvim_cuda_on_cpu_stats(long long* out, int n);
void tinyvim_cuda_on_cpu_reset_stats(void);
const char* cudaGetErrorString(cudaError_t error);
// A "device" buffer of `bytes` whose last byte lies just before an inaccessible page (and whose
// first byte lies after one): a read or write past either end faults at once, and the fault is
// reported on stderr with `name` before the process dies. Filled with 0xFF bytes (NaN in every
// float type): nothing may rely on the contents of memory it did not write. NULL when out of memory.
void* tinyvim_cuda_on_cpu_malloc(size_t bytes, const char* name);
void tinyvim_cuda_on_cpu_free(void* ptr);
}
