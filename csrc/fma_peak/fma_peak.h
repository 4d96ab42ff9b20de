// The float32 arithmetic peak of this CPU, measured rather than looked up: every thread runs chains
// of independent fused multiply-adds on registers only, at the widest vectors cpu_isa() allows. The
// benchmark report divides the achieved GFLOP/s of the arithmetic-bound ops by it ("of peak"), so
// the distance to the machine's limit reads honestly (a GEMM rate as the yardstick would not).
#pragma once

#include <cstdint>

#include "cpu_isa.h"

namespace cnnext {

struct FmaPeak {
  double gflops = 0;  // all threads together, best of the trials
  int threads = 0;    // the threads that ran the loop (at::get_num_threads())
  CpuIsa isa = CpuIsa::baseline;
  int vector_floats = 0;  // floats per vector in that build: 16 (AVX-512), 8 (AVX2), 4 (baseline)
  int chains = 0;         // independent accumulators per thread
};

// Runs the loop on at::get_num_threads() threads, `trials` times for about `trial_seconds` each,
// in the build for `isa` (which must not exceed cpu_isa()), and returns the best rate.
FmaPeak measure_fma_peak(CpuIsa isa, int trials, double trial_seconds);

}  // namespace cnnext
