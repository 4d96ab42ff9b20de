#include "fma_peak/fma_peak.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace cnnext {

// The builds of the loop (fma_loop.h): `iterations` x chains vector multiply-adds on one thread.
float fma_peak_loop_baseline(int64_t iterations, int* floats_per_vector, int* chains);
#if defined(__x86_64__)
float fma_peak_loop_avx2(int64_t iterations, int* floats_per_vector, int* chains);
float fma_peak_loop_avx512(int64_t iterations, int* floats_per_vector, int* chains);
#endif

namespace {

using Loop = float (*)(int64_t, int*, int*);

Loop loop_for(CpuIsa isa) {
#if defined(__x86_64__)
  if (isa == CpuIsa::avx512) return fma_peak_loop_avx512;
  if (isa == CpuIsa::avx2) return fma_peak_loop_avx2;
#endif
  return fma_peak_loop_baseline;
}

volatile float sink;  // the loops' results end here, so none can be optimised away

// Seconds for every one of `threads` threads to run `iterations` of the loop, all started together.
double run_on_every_thread(Loop loop, int64_t iterations, int threads) {
  std::vector<float> results(threads);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) results[t] = loop(iterations, nullptr, nullptr);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sum = 0;
  for (float r : results) sum += r;
  sink = sum;
  return seconds;
}

}  // namespace

FmaPeak measure_fma_peak(CpuIsa isa, int trials, double trial_seconds) {
  TORCH_CHECK(isa <= cpu_isa(), "measure_fma_peak: the ", cpu_isa_name(isa),
              " build is above the level this process runs (", cpu_isa_name(cpu_isa()), ")");
  TORCH_CHECK(trials >= 1 && trials <= 100, "measure_fma_peak: trials must be in [1, 100], got ", trials);
  TORCH_CHECK(trial_seconds >= 1e-3 && trial_seconds <= 10,
              "measure_fma_peak: trial_seconds must be in [0.001, 10], got ", trial_seconds);
  FmaPeak peak;
  peak.isa = isa;
  peak.threads = at::get_num_threads();
  const Loop loop = loop_for(isa);
  loop(1, &peak.vector_floats, &peak.chains);
  // Grow the run until it lasts a tenth of a trial (which also wakes the threads and lets the
  // clock settle), then scale it to a whole one.
  int64_t iterations = 1 << 12;
  double seconds = run_on_every_thread(loop, iterations, peak.threads);
  while (seconds < trial_seconds / 10 && iterations < (int64_t{1} << 40)) {
    iterations *= 2;
    seconds = run_on_every_thread(loop, iterations, peak.threads);
  }
  iterations = std::max<int64_t>(1, static_cast<int64_t>(iterations * trial_seconds / seconds));
  double best = run_on_every_thread(loop, iterations, peak.threads);
  for (int trial = 1; trial < trials; ++trial) {
    best = std::min(best, run_on_every_thread(loop, iterations, peak.threads));
  }
  const double flops =
      2.0 * static_cast<double>(iterations) * peak.chains * peak.vector_floats * peak.threads;
  peak.gflops = flops / best / 1e9;
  return peak;
}

}  // namespace cnnext
