// Stand-in for CUDA's cuda_runtime_api.h in the CPU build (types only; see cuda_types_on_cpu.h).
#pragma once
#include "cuda_types_on_cpu.h"
