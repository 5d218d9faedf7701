// Stand-in for CUDA's cuda_runtime.h in the CPU build: everything is in cuda_on_cpu.h.
#pragma once
#include "cuda_on_cpu.h"
