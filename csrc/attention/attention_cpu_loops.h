// Attention on the CPU: tiled, FlashAttention-style, with the tile products in BLAS.
//
// Forward: one task per (batch*head, block of query rows). The task walks key tiles
// (forward_tiles): S = q_blk k_tile^T * scale (BLAS), online softmax per row (running max m, sum
// l, rescaling the accumulator when m grows), acc += P v_tile (BLAS). Memory beyond q, k, v, out:
// one S tile and one accumulator block per thread, and lse (B, H, Lq).
// Backward, one pass recomputing P from lse, a task per (batch*head, run of key tiles):
//   dV_tile = sum P^T dO,  dK_tile = sum dS^T q * scale,  dQ += dS k * scale
// (dQ per head is owned by one task, or split into per-chunk copies summed in order when there
// are fewer heads than threads; see backward()).
// Causal masking skips whole tiles beyond a block's last visible key and masks the rest per row.
//
// This file is compiled three times, once per level of cpu_isa_target.h (attention_cpu_baseline.cpp,
// _avx2.cpp, _avx512.cpp); the entry points in attention_cpu.cpp pick the widest build the CPU
// supports (cpu_isa.h). Each build exports one factory, attention_cpu_loops_<level>(); everything
// else has internal linkage.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/from_blob.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "attention/attention_cpu_loops_table.h"
#include "attention/attention_cpu_variants.h"
#include "common.h"
#include "cpu_reduce.h"
#include "philox.h"

#include "cpu_isa_target.h"  // last: the code below is compiled for this build's level

// The Fortran BLAS that torch's CPU library carries and exports (MKL on x86-64). Declared weak:
// where a torch build lacks them, gemm() below falls back to at::mm on tensor views, which adds
// a dispatcher call per tile but stays correct.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace cnnext {
namespace {

// Backward tiles: query rows x keys of the P and dS tiles.
constexpr int64_t kQueryBlock = 128, kKeyBlock = 256;

// Forward tiles: a task takes `rows` query rows of one head and walks the keys `keys` at a time.
// Large tiles let BLAS reach its efficient kernels on the products (rows x E)(E x keys) and
// (rows x keys)(keys x Ev): up to 256 x 512, a 512 KiB score tile for float32. Rows halve (to no
// fewer than 32) until there are four tasks per thread, and neither size exceeds what the
// sequences hold (rounded up to 16, a whole vector of floats).
struct ForwardTiles {
  int64_t rows, keys;
};

ForwardTiles forward_tiles(const AttentionGeometry& g) {
  const int64_t tasks_wanted = 4 * at::get_num_threads();
  int64_t rows = 256;
  while (rows > 32 && g.batch * g.heads * ceil_div(g.q_len, rows) < tasks_wanted) rows /= 2;
  auto round_up_16 = [](int64_t n) { return ceil_div(n, int64_t{16}) * 16; };
  return {std::min(rows, round_up_16(g.q_len)), std::min<int64_t>(512, round_up_16(g.k_len))};
}

// Row-major C (m x n) = alpha * op(A) op(B) + beta * C for one tile (sizes far below 2^31). BLAS
// is column-major, where a row-major matrix reads as its transpose: so call it for
// C^T = op(B)^T op(A)^T.
template <typename scalar_t>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
          int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  const char ta = transpose_a ? 'T' : 'N', tb = transpose_b ? 'T' : 'N';
  const int mi = m, ni = n, ki = k, lda_i = lda, ldb_i = ldb, ldc_i = ldc;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ != nullptr) return sgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
  } else {
    if (dgemm_ != nullptr) return dgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto view = [&](const scalar_t* p, int64_t rows, int64_t cols, int64_t ld, bool transpose) {
    auto t = at::from_blob(const_cast<scalar_t*>(p), {transpose ? cols : rows, transpose ? rows : cols}, {ld, 1},
                           options);
    return transpose ? t.t() : t;
  };
  auto c_view = at::from_blob(c, {m, n}, {ldc, 1}, options);
  auto product = at::mm(view(a, m, k, lda, transpose_a), view(b, k, n, ldb, transpose_b)).mul_(alpha);
  if (beta == scalar_t(0)) {
    c_view.copy_(product);
  } else {
    c_view.mul_(beta).add_(product);
  }
}

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
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x));
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

// P[r][j] = exp(S[r][j] - lse[r]) for the keys query row i0 + r may see in tile [j0, j0 + nk), else 0
// (also for a fully masked row, whose lse is -inf).
template <typename scalar_t>
void probabilities_from_lse(scalar_t* s, int64_t ld, const scalar_t* lse, const AttentionGeometry& g, int64_t i0, int64_t nq,
                            int64_t j0, int64_t nk) {
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t visible = std::clamp<int64_t>(g.key_end(i0 + r) - j0, 0, nk);
    scalar_t* row = s + r * ld;
    const scalar_t row_lse = lse[i0 + r];
    if (row_lse == -std::numeric_limits<scalar_t>::infinity()) {
      std::fill(row, row + nk, scalar_t(0));
      continue;
    }
    exp_and_sum(row, visible, row_lse);
    std::fill(row + visible, row + nk, scalar_t(0));
  }
}

// One (B, H, L, D) operand as the loops read it: element d of row i of head (b, h) is at
// data[b * batch + h * head + i * row + d] (rows contiguous; batch and head strides may be 0, a
// broadcast view).
template <typename T>
struct Rows {
  T* data;
  int64_t batch, head, row;

  Rows(T* p, const at::Tensor& t) : data(p), batch(t.stride(0)), head(t.stride(1)), row(t.stride(2)) {}
  T* at(int64_t b, int64_t h, int64_t i) const { return data + b * batch + h * head + i * row; }
};

// Whether any of x's rows of heads (b < batch, h < heads), i < len holds a NaN or an infinity in
// its first `width` elements.
template <typename scalar_t>
bool has_non_finite(const Rows<const scalar_t>& x, int64_t batch, int64_t heads, int64_t len, int64_t width) {
  std::atomic<bool> found{false};
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end && !found.load(std::memory_order_relaxed); ++bh) {
      const scalar_t* head = x.at(bh / heads, bh % heads, 0);
      bool finite = true;
      if (x.row == width) {
        finite = all_finite(head, len * width);  // rows back to back: one run
      } else {
        for (int64_t i = 0; i < len && finite; ++i) finite = all_finite(head + i * x.row, width);
      }
      if (!finite) found.store(true, std::memory_order_relaxed);
    }
  });
  return found.load();
}

// The additive bias of the scores: element (b, h, i, j) at data[b sb + h sh + i si + j sj] (any
// strides, broadcast ones 0), or none.
template <typename scalar_t>
struct Bias {
  const scalar_t* data = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;

  // S[r][j] += bias for query rows i0 + r, keys j0 + j of head (b, h); S's rows are ld apart.
  void add(scalar_t* s, int64_t ld, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk) const {
    if (data == nullptr) return;
    for (int64_t r = 0; r < nq; ++r) {
      const scalar_t* src = data + b * sb + h * sh + (i0 + r) * si + j0 * sj;
      scalar_t* row = s + r * ld;
      if (sj == 1) {
        for (int64_t j = 0; j < nk; ++j) row[j] += src[j];
      } else {
        for (int64_t j = 0; j < nk; ++j) row[j] += src[j * sj];
      }
    }
  }
};

// Dropout of attention weights (philox.h): weight (b, h, i, j) is element ((b H + h) Lq + i) Lk + j
// of the mask.
struct Dropout {
  bool on = false;
  uint64_t seed = 0, offset = 0;
  uint32_t threshold = 0;
  double scale = 1.0;  // 1 / (1 - p) for kept weights; 0 when p = 1

  // row[j] *= kept ? scale : 0 for the n weights from mask element `first` on.
  template <typename scalar_t>
  void apply(scalar_t* row, int64_t n, uint64_t first) const {
    PhiloxBlock block{};
    for (int64_t j = 0; j < n; ++j) {
      const uint64_t index = first + static_cast<uint64_t>(j);
      if (j == 0 || index % 4 == 0) block = philox4x32_10(index / 4, offset, seed);
      const bool kept = (block.x[index % 4] >> 8) >= threshold;
      row[j] = kept ? row[j] * static_cast<scalar_t>(scale) : scalar_t(0);
    }
  }
};

Dropout make_dropout(const AttentionOptions& options) {
  Dropout d;
  d.on = options.dropout();
  d.seed = static_cast<uint64_t>(options.seed);
  d.offset = static_cast<uint64_t>(options.offset);
  d.threshold = dropout_threshold(options.dropout_p);
  d.scale = options.dropout_p < 1.0 ? 1.0 / (1.0 - options.dropout_p) : 0.0;
  return d;
}

template <typename scalar_t>
Bias<scalar_t> make_bias(const AttentionOptions& options) {
  Bias<scalar_t> bias;
  if (!options.bias.defined()) return bias;
  const at::Tensor& t = options.bias;
  bias.data = t.const_data_ptr<scalar_t>();
  bias.sb = t.stride(0), bias.sh = t.stride(1), bias.si = t.stride(2), bias.sj = t.stride(3);
  return bias;
}

template <typename scalar_t>
void forward(const Rows<const scalar_t>& q, const Rows<const scalar_t>& k, const Rows<const scalar_t>& v, scalar_t* out,
             scalar_t* lse, const AttentionGeometry& g, const AttentionOptions& options) {
  const int64_t E = g.head_dim, Ev = g.v_dim, Lq = g.q_len, Lk = g.k_len;
  const ForwardTiles tiles = forward_tiles(g);
  const int64_t q_blocks = ceil_div(Lq, tiles.rows), ld = tiles.keys;  // ld: the score tile's row stride
  const Bias<scalar_t> bias = make_bias<scalar_t>(options);
  const Dropout dropout = make_dropout(options);
  const bool search_scores = options.bias_has_nan_or_inf || has_non_finite(q, g.batch, g.heads, Lq, E) ||
                             has_non_finite(k, g.batch, g.kv_heads, Lk, E);  // see any_nan_or_inf
  count_attention_cpu_variant(search_scores ? AttentionCpuVariant::kForwardTiledSearchingScores
                                             : AttentionCpuVariant::kForwardTiled);
  at::parallel_for(0, g.batch * g.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> s(tiles.rows * tiles.keys), acc(tiles.rows * Ev), m(tiles.rows), l(tiles.rows);
    std::vector<char> nan_row(tiles.rows);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, i0 = (task % q_blocks) * tiles.rows, nq = std::min(tiles.rows, Lq - i0);
      const int64_t b = bh / g.heads, h = bh % g.heads, hk = h / g.group();
      const scalar_t* q_blk = q.at(b, h, i0);  // (nq, E), rows q.row apart
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(l.begin(), l.end(), scalar_t(0));
      std::fill(nan_row.begin(), nan_row.end(), 0);
      const int64_t k_end = g.key_end(i0 + nq - 1);
      for (int64_t j0 = 0; j0 < k_end; j0 += tiles.keys) {
        const int64_t nk = std::min(tiles.keys, k_end - j0);
        gemm<scalar_t>(false, true, nq, nk, E, g.scale, q_blk, q.row, k.at(b, hk, j0), k.row, 0.0, s.data(), ld);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t visible = std::clamp<int64_t>(g.key_end(i0 + r) - j0, 0, nk);
          scalar_t* row = s.data() + r * ld;
          bias.add(row, ld, b, h, i0 + r, 1, j0, nk);  // row by row: it stays in L1 for the passes below
          if (search_scores) nan_row[r] |= any_nan_or_inf(row, visible);
          const scalar_t new_max = row_max(row, visible, m[r]);
          if (visible == 0 || new_max == -std::numeric_limits<scalar_t>::infinity()) {
            std::fill(row, row + nk, scalar_t(0));
            continue;
          }
          // The running max grew: rescale what the row has summed so far (nothing before its first
          // visible tile, which is all a single-tile row ever has).
          if (new_max != m[r] && m[r] != -std::numeric_limits<scalar_t>::infinity()) {
            const scalar_t rescale = exp_vectorizable(m[r] - new_max);
            l[r] *= rescale;
            scalar_t* acc_row = acc.data() + r * Ev;
            for (int64_t d = 0; d < Ev; ++d) acc_row[d] *= rescale;
          }
          m[r] = new_max;
          l[r] += exp_and_sum(row, visible, new_max);  // the softmax sums undropped weights
          std::fill(row + visible, row + nk, scalar_t(0));
          if (dropout.on) dropout.apply(row, visible, static_cast<uint64_t>((bh * Lq + i0 + r) * Lk + j0));
        }
        gemm<scalar_t>(false, false, nq, Ev, nk, 1.0, s.data(), ld, v.at(b, hk, j0), v.row, 1.0, acc.data(), Ev);
      }
      const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
      for (int64_t r = 0; r < nq; ++r) {
        scalar_t* out_row = out + (bh * Lq + i0 + r) * Ev;
        const scalar_t inv = l[r] > 0 ? scalar_t(1) / l[r] : scalar_t(0);
        for (int64_t d = 0; d < Ev; ++d) out_row[d] = nan_row[r] ? nan : acc[r * Ev + d] * inv;
      }
      log_of_sums(l.data(), nq);
      for (int64_t r = 0; r < nq; ++r) {
        lse[bh * Lq + i0 + r] = nan_row[r] ? nan : m[r] + l[r];  // -inf for a fully masked row
      }
    }
  });
}

template <typename scalar_t>
void backward(const scalar_t* dout, const Rows<const scalar_t>& q, const Rows<const scalar_t>& k,
              const Rows<const scalar_t>& v, const scalar_t* out, const scalar_t* lse_all, scalar_t* dq, scalar_t* dk,
              scalar_t* dv, scalar_t* dbias, const AttentionGeometry& g, const AttentionOptions& options) {
  const int64_t E = g.head_dim, Ev = g.v_dim, Lq = g.q_len, Lk = g.k_len, BH = g.batch * g.heads;
  const int64_t BHk = g.batch * g.kv_heads, group = g.group();
  const Bias<scalar_t> bias = make_bias<scalar_t>(options);
  const Dropout dropout = make_dropout(options);
  // delta[i] = rowsum(dO_i * O_i), the softmax-gradient correction of each query row.
  std::vector<scalar_t> delta(BH * Lq);
  at::parallel_for(0, BH * Lq, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum = 0;
      for (int64_t d = 0; d < Ev; ++d) sum += dout[i * Ev + d] * out[i * Ev + d];
      delta[i] = sum;
    }
  });

  // For query block [i0, i0 + nq) of head (b, h) x key tile [j0, j0 + nk): P (dropped, P * Z, in
  // p: what dV multiplies), and dS = P * (dO v^T * Z - delta) in ds (also written to dbias).
  auto scores_and_grads = [&](int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk, scalar_t* p,
                              scalar_t* ds) {
    const int64_t bh = b * g.heads + h, hk = h / group;
    const scalar_t* do_blk = dout + (bh * Lq + i0) * Ev;
    gemm<scalar_t>(false, true, nq, nk, E, g.scale, q.at(b, h, i0), q.row, k.at(b, hk, j0), k.row, 0.0, p, kKeyBlock);
    bias.add(p, kKeyBlock, b, h, i0, nq, j0, nk);
    probabilities_from_lse(p, kKeyBlock, lse_all + bh * Lq, g, i0, nq, j0, nk);
    gemm<scalar_t>(false, true, nq, nk, Ev, 1.0, do_blk, Ev, v.at(b, hk, j0), v.row, 0.0, ds, kKeyBlock);
    for (int64_t r = 0; r < nq; ++r) {
      scalar_t* p_row = p + r * kKeyBlock;
      scalar_t* ds_row = ds + r * kKeyBlock;
      const uint64_t first = static_cast<uint64_t>((bh * Lq + i0 + r) * Lk + j0);
      if (dropout.on) dropout.apply(ds_row, nk, first);  // dP * Z
      const scalar_t row_delta = delta[bh * Lq + i0 + r];
      for (int64_t j = 0; j < nk; ++j) ds_row[j] = p_row[j] * (ds_row[j] - row_delta);
      if (dropout.on) dropout.apply(p_row, nk, first);  // P * Z, for dV
      if (dbias != nullptr) std::copy(ds_row, ds_row + nk, dbias + (bh * Lq + i0 + r) * Lk + j0);
    }
  };

  // One pass: a task owns a run of key tiles of one (batch, key/value head), so it writes their dK
  // and dV alone (summing over the query heads of its group) and adds dS k * scale into those
  // heads' dQ. With at least as many (batch, key/value head) pairs as threads a task takes all of
  // a head's key tiles and owns its group's dQ; otherwise the key tiles are split into `chunks`
  // and each chunk adds into its own dQ copy, summed in chunk order at the end (deterministic).
  const int64_t k_tiles = ceil_div(Lk, kKeyBlock), threads = at::get_num_threads();
  const int64_t chunks = BHk >= threads ? 1 : std::min(k_tiles, ceil_div(threads, BHk));
  const int64_t tiles_per_chunk = ceil_div(k_tiles, chunks);
  count_attention_cpu_variant(chunks == 1 ? AttentionCpuVariant::kBackwardKeyTilesPerHead
                                          : AttentionCpuVariant::kBackwardKeyTilesInChunks);
  std::vector<scalar_t> dq_chunks(chunks > 1 ? chunks * BH * Lq * E : 0, scalar_t(0));
  if (chunks == 1) std::fill(dq, dq + BH * Lq * E, scalar_t(0));
  at::parallel_for(0, BHk * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> p(kQueryBlock * kKeyBlock), ds(kQueryBlock * kKeyBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bhk = task / chunks, chunk = task % chunks, b = bhk / g.kv_heads, hk = bhk % g.kv_heads;
      scalar_t* dq_all = chunks == 1 ? dq : dq_chunks.data() + chunk * BH * Lq * E;
      const int64_t first_tile = chunk * tiles_per_chunk, last_tile = std::min(k_tiles, first_tile + tiles_per_chunk);
      for (int64_t tile = first_tile; tile < last_tile; ++tile) {
        const int64_t j0 = tile * kKeyBlock, nk = std::min(kKeyBlock, Lk - j0);
        scalar_t* dk_tile = dk + (bhk * Lk + j0) * E;
        scalar_t* dv_tile = dv + (bhk * Lk + j0) * Ev;
        std::fill(dk_tile, dk_tile + nk * E, scalar_t(0));
        std::fill(dv_tile, dv_tile + nk * Ev, scalar_t(0));
        // Causal: query rows before j0 see none of this tile.
        const int64_t first_block = g.causal ? (std::min(j0, Lq) / kQueryBlock) * kQueryBlock : 0;
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const int64_t bh = b * g.heads + h;
          for (int64_t i0 = first_block; i0 < Lq; i0 += kQueryBlock) {
            const int64_t nq = std::min(kQueryBlock, Lq - i0);
            scores_and_grads(b, h, i0, nq, j0, nk, p.data(), ds.data());
            const scalar_t* do_blk = dout + (bh * Lq + i0) * Ev;
            gemm<scalar_t>(true, false, nk, Ev, nq, 1.0, p.data(), kKeyBlock, do_blk, Ev, 1.0, dv_tile, Ev);
            gemm<scalar_t>(true, false, nk, E, nq, g.scale, ds.data(), kKeyBlock, q.at(b, h, i0), q.row, 1.0, dk_tile,
                           E);
            gemm<scalar_t>(false, false, nq, E, nk, g.scale, ds.data(), kKeyBlock, k.at(b, hk, j0), k.row, 1.0,
                           dq_all + (bh * Lq + i0) * E, E);
          }
        }
      }
    }
  });
  for (int64_t chunk = 0; chunk < chunks && chunks > 1; ++chunk) {
    const scalar_t* part = dq_chunks.data() + chunk * BH * Lq * E;
    for (int64_t i = 0; i < BH * Lq * E; ++i) dq[i] = chunk == 0 ? part[i] : dq[i] + part[i];
  }
}

void forward_loop(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                  const at::Tensor& lse, const AttentionGeometry& g, const AttentionOptions& options) {
  CNNEXT_DISPATCH_CPU_TYPES(q.scalar_type(), "attention_forward_cpu", [&] {
    using Operand = Rows<const scalar_t>;
    forward(Operand(q.const_data_ptr<scalar_t>(), q), Operand(k.const_data_ptr<scalar_t>(), k),
            Operand(v.const_data_ptr<scalar_t>(), v), out.mutable_data_ptr<scalar_t>(),
            lse.mutable_data_ptr<scalar_t>(), g, options);
  });
}

void backward_loop(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                   const at::Tensor& dv, const at::Tensor& dbias, const AttentionGeometry& g,
                   const AttentionOptions& options) {
  CNNEXT_DISPATCH_CPU_TYPES(q.scalar_type(), "attention_backward_cpu", [&] {
    using Operand = Rows<const scalar_t>;
    backward(dout.const_data_ptr<scalar_t>(), Operand(q.const_data_ptr<scalar_t>(), q),
             Operand(k.const_data_ptr<scalar_t>(), k), Operand(v.const_data_ptr<scalar_t>(), v),
             out.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(), dq.mutable_data_ptr<scalar_t>(),
             dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(),
             dbias.defined() ? dbias.mutable_data_ptr<scalar_t>() : nullptr, g, options);
  });
}

}  // namespace

AttentionCpuLoops CNNEXT_ISA_NAME(attention_cpu_loops)() { return {&forward_loop, &backward_loop}; }

}  // namespace cnnext
