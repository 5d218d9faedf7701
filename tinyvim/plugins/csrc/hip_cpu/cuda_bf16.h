// Stand-in for CUDA's cuda_bf16.h in the CPU build: the kernel source runs on HIP-CPU through
// cuda_on_cpu.h (see there).
#pragma once
#include "cuda_on_cpu.h"
