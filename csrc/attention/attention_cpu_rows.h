// Row arithmetic of the CPU attention loops on 16-float vectors: exp, log, maxima, sums and
// finiteness checks over score rows. Part of one instruction-set build (attention_cpu_loops.h),
// which includes it after cpu_isa_target.h, inside its namespaces; it includes nothing itself.
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "attention/attention_cpu_rows.h is part of a loops build: include attention/attention_cpu_loops.h"
#endif

namespace cnnext {
namespace {

// Sixteen floats as one value (GCC vector extension): its arithmetic compiles to one AVX-512
// register, two AVX2 ones or four SSE ones, whichever build this is. The row loops below are
// written on it rather than left to the auto-vectoriser, which kept the running maximum scalar.
// The values never cross a function boundary between builds (internal linkage, inlined), so
// GCC's note that passing them by value differs between ISAs (-Wpsabi) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Floats16 __attribute__((vector_size(64)));
typedef uint32_t Bits16 __attribute__((vector_size(64)));
constexpr int64_t kFloats16 = 16;

inline Floats16 load16(const float* p) {
  Floats16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, Floats16 v) { std::memcpy(p, &v, sizeof(v)); }
inline Floats16 splat16(float x) { return Floats16{} + x; }
// The first n (< 16) floats of p, the rest `fill`.
inline Floats16 load16_partial(const float* p, int64_t n, float fill) {
  float buffer[kFloats16];
  for (int64_t t = 0; t < kFloats16; ++t) buffer[t] = t < n ? p[t] : fill;
  return load16(buffer);
}
inline void store16_partial(float* p, int64_t n, Floats16 v) {
  for (int64_t t = 0; t < n; ++t) p[t] = v[t];
}

// exp of 16 floats without a libm call: exp(x) = 2^n * exp(r) with n = round(x / ln 2) and
// |r| <= ln(2) / 2, exp(r) by its Taylor series to degree 6 (truncation below 1.2e-7 relative;
// the largest error against float64 exp is 7.3e-8 over [-87, 0], 2.2e-7 up to 88), then scaled by
// 2^n. Below -87 the result is 0 (exp there is ~1e-38, at the subnormal edge): masked scores
// (-inf) must give exact zeros, since products with subnormal weights take the CPU's slow path.
// NaN gives an unspecified value: the loops handle NaN rows apart.
inline Floats16 exp_of_reduced(Floats16 r) {
  Floats16 p = splat16(1.0f / 720);
  p = 1.0f / 120 + r * p;
  p = 1.0f / 24 + r * p;
  p = 1.0f / 6 + r * p;
  p = 0.5f + r * p;
  p = 1.0f + r * p;
  return 1.0f + r * p;
}
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693145751953125f, kLn2Low = 1.4286068203094172e-6f;  // ln 2 in two parts

#if CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX512
// AVX-512: n by one rounding instruction and 2^n applied by vscalefps, which also zeroes the
// lanes below -87 (also -inf and NaN) in the same instruction: 12 instructions instead of 17.
inline Floats16 exp16(Floats16 x_) {
  const __m512 x = (__m512)x_;
  const __mmask16 in_range = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  // (maskz_: lanes out of range get n = 0, zeroed below anyway; the unmasked form trips GCC 12's
  // -Wmaybe-uninitialized inside its own header.)
  const __m512 n = _mm512_maskz_roundscale_ps(in_range, _mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r =
      _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x));
  return (Floats16)_mm512_maskz_scalef_ps(in_range, (__m512)exp_of_reduced((Floats16)r), n);
}
#else
// Other builds: inputs are clamped to [-87, 88], where 2^n stays a normal float, and n comes from
// adding 1.5 * 2^23 to x / ln 2, which leaves n in the low mantissa bits of the sum (round to
// nearest, no conversion instruction); 2^n is built in the exponent bits.
inline Floats16 exp16(Floats16 x) {
  const auto underflows = x < -87.0f;  // also -inf (masked, or the first tile's rescale)
  x = x < -87.0f ? splat16(-87.0f) : x;
  x = x > 88.0f ? splat16(88.0f) : x;
  constexpr float kRoundingShift = 12582912.0f;  // 1.5 * 2^23: its ulp is 1
  const Floats16 shifted = x * kLog2e + kRoundingShift;
  const Floats16 n = shifted - kRoundingShift;
  const Floats16 p = exp_of_reduced((x - n * kLn2High) - n * kLn2Low);
  // shifted's bits are those of 1.5 * 2^23 plus n in the mantissa, of which the shift by 23 keeps
  // the lowest 9 bits: what remains is (n + 127) << 23, the float 2^n.
  Bits16 bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits + 127u) << 23;
  Floats16 two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof(two_to_n));
  return underflows ? Floats16{} : p * two_to_n;
}
#endif

// log of 16 floats that are 0 or normal and positive (the softmax sums: at least 1 for a row with
// a visible key, 0 for a fully masked one), -inf for 0: x = 2^e f with f in [sqrt(1/2), sqrt(2)),
// log f = 2 atanh(t) with t = (f - 1) / (f + 1), |t| <= 0.172, by its series to t^9 (truncation
// below 1e-9); within 2.2e-7 relative of float64 log on [1.01, 1e7], 1e-6 absolute.
inline Floats16 log16(Floats16 x) {
  typedef int32_t Ints16 __attribute__((vector_size(64)));
  Bits16 bits;
  std::memcpy(&bits, &x, sizeof(bits));
  Ints16 exponent = (Ints16)(bits >> 23) - 127;
  bits = (bits & 0x7fffffu) | 0x3f800000u;  // the mantissa as a float in [1, 2)
  Floats16 f;
  std::memcpy(&f, &bits, sizeof(f));
  const auto high = f > 1.41421356f;
  f = high ? f * 0.5f : f;
  exponent = high ? exponent + 1 : exponent;
  const Floats16 t = (f - 1.0f) / (f + 1.0f), t2 = t * t;
  Floats16 p = splat16(1.0f / 9);
  p = 1.0f / 7 + t2 * p;
  p = 1.0f / 5 + t2 * p;
  p = 1.0f / 3 + t2 * p;
  p = 1.0f + t2 * p;
  const Floats16 log_x = __builtin_convertvector(exponent, Floats16) * 0.693147180559945309f + 2.0f * t * p;
  return x > 0.0f ? log_x : splat16(-std::numeric_limits<float>::infinity());
}

// x[i] = log(x[i]) for the n softmax sums of a block (see log16; -inf for 0).
inline void log_of_sums(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kFloats16 <= n; i += kFloats16) store16(x + i, log16(load16(x + i)));
  if (i < n) store16_partial(x + i, n - i, log16(load16_partial(x + i, n - i, 1.0f)));
}
inline void log_of_sums(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::log(x[i]);
}

inline float exp_vectorizable(float x) { return exp16(splat16(x))[0]; }

// The sum and the maximum of v's 16 floats, in every lane: four butterfly steps, each combining
// every lane with its partner 8, 4, 2 and 1 lanes away (4 dependent steps, not 15, and no
// extraction: the result serves directly as a vector operand).
typedef int32_t Lanes16 __attribute__((vector_size(64)));
template <typename Combine>
inline Floats16 butterfly(Floats16 v, Combine combine) {
  v = combine(v, __builtin_shuffle(v, Lanes16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  v = combine(v, __builtin_shuffle(v, Lanes16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
  v = combine(v, __builtin_shuffle(v, Lanes16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
  return combine(v, __builtin_shuffle(v, Lanes16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
}
inline Floats16 sum_in_all_lanes(Floats16 v) {
  return butterfly(v, [](Floats16 a, Floats16 b) { return a + b; });
}
inline Floats16 max_in_all_lanes(Floats16 v) {  // NaN lanes lose to any number (a `>` comparison)
  return butterfly(v, [](Floats16 a, Floats16 b) { return b > a ? b : a; });
}
inline float horizontal_sum(Floats16 v) { return sum_in_all_lanes(v)[0]; }
inline double exp_vectorizable(double x) { return std::exp(x); }

// The largest of row[0..n) and `init`; NaN is skipped (as with a `>` comparison).
inline float row_max(const float* row, int64_t n, float init) {
  Floats16 m = splat16(init);
  int64_t j = 0;
  for (; j + kFloats16 <= n; j += kFloats16) {
    const Floats16 x = load16(row + j);
    m = x > m ? x : m;
  }
  if (j < n) {
    const Floats16 x = load16_partial(row + j, n - j, init);
    m = x > m ? x : m;
  }
  return max_in_all_lanes(m)[0];
}
inline double row_max(const double* row, int64_t n, double init) { return max_lanes(row, n, init); }

// row[j] = exp(row[j] - shift) for j < n; returns their sum.
inline float exp_and_sum(float* row, int64_t n, float shift) {
  Floats16 sum{};
  int64_t j = 0;
  for (; j + kFloats16 <= n; j += kFloats16) {
    const Floats16 e = exp16(load16(row + j) - shift);
    store16(row + j, e);
    sum += e;
  }
  if (j < n) {
    const Floats16 e = exp16(load16_partial(row + j, n - j, -std::numeric_limits<float>::infinity()) - shift);
    store16_partial(row + j, n - j, e);
    sum += e;
  }
  return horizontal_sum(sum);
}
inline double exp_and_sum(double* row, int64_t n, double shift) {
  for (int64_t j = 0; j < n; ++j) row[j] = std::exp(row[j] - shift);
  return sum_lanes<double>(row, n);
}

// Whether any of the n values is NaN or +inf. A score like that makes the plain softmax of its row
// NaN (SDPA's math path), but the running max skips NaN and exp_vectorizable is not defined
// there, so such rows are marked and written as NaN at the end. Only when q or k holds a
// non-finite value can a score be one (short of a finite overflow), so the scores are searched
// only then: a pass over q and k, not over every score.
template <typename scalar_t>
bool any_nan_or_inf(const scalar_t* p, int64_t n) {
  constexpr scalar_t kInf = std::numeric_limits<scalar_t>::infinity();
  bool found = false;
  for (int64_t i = 0; i < n; ++i) found |= !(p[i] < kInf);
  return found;
}

// Whether p[0..n) holds no NaN and no infinity: x * 0 is NaN exactly for non-finite x, and a sum
// of such products is 0 only when none is.
inline bool all_finite(const float* p, int64_t n) {
  Floats16 sum{};
  int64_t i = 0;
  for (; i + kFloats16 <= n; i += kFloats16) sum += load16(p + i) * 0.0f;
  if (i < n) sum += load16_partial(p + i, n - i, 0.0f) * 0.0f;
  return horizontal_sum(sum) == 0.0f;
}
inline bool all_finite(const double* p, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i] * 0.0;
  return sum == 0.0;
}

}  // namespace
}  // namespace cnnext
