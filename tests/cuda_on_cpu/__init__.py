"""The CUDA kernel's own source run on the CPU, for the tests (not part of the wheel).

cross_scan_kernel.cuh and the launcher + C ABI of cross_scan_kernel.cu (tinyvim/plugins/csrc), unmodified,
compiled with g++ against csrc/ here: our own small CUDA-on-CPU runtime (a fiber per CUDA thread,
__syncthreads a fiber switch, blocks run in interleaved pairs on a few OS threads, NaN-filled shared
memory, CUDA's launch limits, guard-paged device buffers). One job per module:

  rewrite  the launcher's `k<<<...>>>(...)` -> a runtime call, the `extern __shared__` definition
  build    compiling and caching the kernel library and the TensorRT plugin on top of it
  storage  float32 <-> the 16-bit storage the kernel reads and writes (numpy, independent of the runtime)
  device   loading a library, guard-paged buffers, one call of the scan's C ABI
  plan     the launcher's plan (mirrored) and the cases that reach each of its branches
  cases    the check cases and check_case (twin bit for bit, float64 reference within tolerance)
  __main__ `python -m cuda_on_cpu check LIB...` (the mutation test runs libraries in a child process)
"""
