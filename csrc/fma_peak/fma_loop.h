// The FMA peak loop, compiled once per instruction-set level (cpu_isa_target.h): fma_loop_*.cpp
// define CNNEXT_TARGET_ISA and include this header, which includes cpu_isa_target.h last.
//
// kChains accumulators, each updated by one multiply-add per iteration that depends only on its own
// previous value: a core with P vector FMA pipes of latency L needs P x L independent chains to
// keep every pipe busy (Zen 4 and Sapphire Rapids: 2 x 4 = 8); 12 leave room for a longer latency
// and still fit in 16 vector registers with the two constants.
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_isa_target.h"  // last include: what follows is compiled for this build's level

namespace cnnext {
namespace {

constexpr int kChains = 12;

#if CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX512
using Vec = __m512;
inline Vec splat(float v) { return _mm512_set1_ps(v); }
inline Vec multiply_add(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float lane_sum(Vec v) { return _mm512_reduce_add_ps(v); }
constexpr int kFloats = 16;
#elif CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX2_FMA
using Vec = __m256;
inline Vec splat(float v) { return _mm256_set1_ps(v); }
inline Vec multiply_add(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float lane_sum(Vec v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float sum = 0;
  for (float x : lanes) sum += x;
  return sum;
}
constexpr int kFloats = 8;
#elif CNNEXT_TARGET_ISA == CNNEXT_ISA_BASELINE
// Four floats in the compiler's generic vectors: SSE2 on x86-64 (a multiply and an add, as the
// baseline has no FMA instruction), whatever the target offers elsewhere.
using Vec = float __attribute__((vector_size(16)));
inline Vec splat(float v) { return Vec{v, v, v, v}; }
inline Vec multiply_add(Vec a, Vec b, Vec c) { return a * b + c; }
inline float lane_sum(Vec v) { return v[0] + v[1] + v[2] + v[3]; }
constexpr int kFloats = 4;
#else
#error "the FMA peak loop has builds for the baseline, AVX2 + FMA and AVX-512 levels"
#endif

}  // namespace

// Runs `iterations` x kChains vector multiply-adds; returns their sum so the compiler must keep
// them. acc = acc * m + a with m just below 1 stays finite and normal for any iteration count.
// Says its vector width and chain count where asked (non-null).
float CNNEXT_ISA_NAME(fma_peak_loop)(int64_t iterations, int* floats_per_vector, int* chains) {
  if (floats_per_vector != nullptr) *floats_per_vector = kFloats;
  if (chains != nullptr) *chains = kChains;
  const Vec m = splat(0.999999f), a = splat(1e-3f);
  Vec acc[kChains];
#pragma GCC unroll 12
  for (int i = 0; i < kChains; ++i) acc[i] = splat(static_cast<float>(i));
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = multiply_add(acc[i], m, a);
  }
  float sum = 0;
#pragma GCC unroll 12
  for (int i = 0; i < kChains; ++i) sum += lane_sum(acc[i]);
  return sum;
}

}  // namespace cnnext
