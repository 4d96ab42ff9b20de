// Which build of the CPU loops to run: the kernels with hand-vectorisable loops (pooling,
// attention) are compiled for the x86-64 baseline and for AVX2 + FMA, and use the latter where
// this returns true: the CPU supports both (every AVX2 CPU from Intel Haswell and AMD Zen on) and
// CNNEXT_CPU_ISA=baseline is not set (tests use that to cover the baseline build). Decided once
// per process.
#pragma once

namespace cnnext {
bool cpu_use_avx2();
}  // namespace cnnext
