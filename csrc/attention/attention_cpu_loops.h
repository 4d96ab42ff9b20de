// Attention on the CPU: tiled, FlashAttention-style, with the tile products in BLAS.
//
// Forward: one task per (batch*head, block of kQueryBlock query rows). The task walks key tiles of
// kKeyBlock keys: S = q_blk k_tile^T * scale (BLAS), online softmax per row (running max m, sum
// l, rescaling the accumulator when m grows), acc += P v_tile (BLAS). Memory beyond q, k, v, out:
// one S tile and one accumulator block per thread, and lse (B, H, Lq).
// Backward, one pass recomputing P from lse, a task per (batch*head, run of key tiles):
//   dV_tile = sum P^T dO,  dK_tile = sum dS^T q * scale,  dQ += dS k * scale
// (dQ per head is owned by one task, or split into per-chunk copies summed in order when there
// are fewer heads than threads; see backward()).
// Causal masking skips whole tiles beyond a block's last visible key and masks the rest per row.
//
// This file is compiled twice (attention_cpu_baseline.cpp, attention_cpu_avx2.cpp); the entry
// points in attention_cpu.cpp pick the AVX2 build where the CPU has it (cpu_isa.h). Each build
// exports one factory, CNNEXT_ATTENTION_LOOPS_FACTORY; everything else has internal linkage.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/from_blob.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention_cpu_loops_table.h"
#include "common.h"
#include "cpu_reduce.h"
#include "philox.h"

#ifndef CNNEXT_ATTENTION_LOOPS_FACTORY
#error "define CNNEXT_ATTENTION_LOOPS_FACTORY before including attention_cpu_loops.h"
#endif

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

constexpr int64_t kQueryBlock = 64, kKeyBlock = 128;

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

// exp for float32 that the compiler can vectorise (std::exp is a scalar libm call, and was most of
// the time here): exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2, exp(r) by
// its Taylor series to degree 7 (truncation error < 6e-9, below float32's epsilon), 2^n built in
// the exponent bits. Inputs are clamped to [-87, 88], where 2^n stays a normal float (the clamps
// vectorise as min/max thanks to -fno-trapping-math, see setup.py), and below -87 the result is 0
// (exp there is ~1e-38, at the subnormal edge): masked scores (-inf) must give exact zeros, since
// products with subnormal weights take the CPU's slow path (a padding mask made the forward 6x
// slower before). float64 keeps std::exp.
inline float exp_vectorizable(float x) {
  const bool underflows = x < -87.0f;  // also -inf (masked, or the first tile's rescale)
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const int n = static_cast<int>(x * 1.44269504088896341f + 0.5f + 1024.0f) - 1024;  // floor, as x > -1024 ln 2
  const float r = (x - static_cast<float>(n) * 0.693145751953125f) - static_cast<float>(n) * 1.4286068203094172e-6f;
  float p = 1.0f / 40320;
  p = 1.0f / 5040 + r * p;
  p = 1.0f / 720 + r * p;
  p = 1.0f / 120 + r * p;
  p = 1.0f / 24 + r * p;
  p = 1.0f / 6 + r * p;
  p = 0.5f + r * p;
  p = 1.0f + r * p;
  p = 1.0f + r * p;
  const int32_t bits = (n + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof(two_to_n));
  return underflows ? 0.0f : p * two_to_n;
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

template <typename scalar_t>
bool all_finite(const scalar_t* p, int64_t n) {
  // x * 0 is NaN exactly for non-finite x; eight partial sums let the loop vectorise (max_lanes).
  constexpr int kLanes = 8;
  scalar_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += p[i + j] * scalar_t(0);
  scalar_t sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  for (; i < n; ++i) sum += p[i] * scalar_t(0);
  return sum == scalar_t(0);
}
inline double exp_vectorizable(double x) { return std::exp(x); }

// P[r][j] = exp(S[r][j] - lse[r]) for the keys query row i0 + r may see in tile [j0, j0 + nk), else 0
// (also for a fully masked row, whose lse is -inf).
template <typename scalar_t>
void probabilities_from_lse(scalar_t* s, const scalar_t* lse, const AttentionGeometry& g, int64_t i0, int64_t nq,
                            int64_t j0, int64_t nk) {
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t visible = std::clamp<int64_t>(g.key_end(i0 + r) - j0, 0, nk);
    scalar_t* row = s + r * kKeyBlock;
    const scalar_t row_lse = lse[i0 + r];
    if (row_lse == -std::numeric_limits<scalar_t>::infinity()) {
      std::fill(row, row + nk, scalar_t(0));
      continue;
    }
    for (int64_t j = 0; j < visible; ++j) row[j] = exp_vectorizable(row[j] - row_lse);
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

// The additive bias of the scores: element (b, h, i, j) at data[b sb + h sh + i si + j sj] (any
// strides, broadcast ones 0), or none.
template <typename scalar_t>
struct Bias {
  const scalar_t* data = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;

  // S[r][j] += bias for query rows i0 + r, keys j0 + j of head (b, h).
  void add(scalar_t* s, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk) const {
    if (data == nullptr) return;
    for (int64_t r = 0; r < nq; ++r) {
      const scalar_t* src = data + b * sb + h * sh + (i0 + r) * si + j0 * sj;
      scalar_t* row = s + r * kKeyBlock;
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
  const int64_t E = g.head_dim, Ev = g.v_dim, Lq = g.q_len, Lk = g.k_len, q_blocks = ceil_div(Lq, kQueryBlock);
  const Bias<scalar_t> bias = make_bias<scalar_t>(options);
  const Dropout dropout = make_dropout(options);
  at::parallel_for(0, g.batch * g.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> s(kQueryBlock * kKeyBlock), acc(kQueryBlock * Ev), m(kQueryBlock), l(kQueryBlock);
    std::vector<char> nan_row(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, i0 = (task % q_blocks) * kQueryBlock, nq = std::min(kQueryBlock, Lq - i0);
      const int64_t b = bh / g.heads, h = bh % g.heads, hk = h / g.group();
      const scalar_t* q_blk = q.at(b, h, i0);  // (nq, E), rows q.row apart
      bool search_scores = options.bias_has_nan_or_inf;  // see any_nan_or_inf
      for (int64_t r = 0; r < nq && !search_scores; ++r) search_scores = !all_finite(q_blk + r * q.row, E);
      for (int64_t j = 0; j < Lk && !search_scores; ++j) search_scores = !all_finite(k.at(b, hk, j), E);
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(l.begin(), l.end(), scalar_t(0));
      std::fill(nan_row.begin(), nan_row.end(), 0);
      const int64_t k_end = g.key_end(i0 + nq - 1);
      for (int64_t j0 = 0; j0 < k_end; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, k_end - j0);
        gemm<scalar_t>(false, true, nq, nk, E, g.scale, q_blk, q.row, k.at(b, hk, j0), k.row, 0.0, s.data(), kKeyBlock);
        bias.add(s.data(), b, h, i0, nq, j0, nk);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t visible = std::clamp<int64_t>(g.key_end(i0 + r) - j0, 0, nk);
          scalar_t* row = s.data() + r * kKeyBlock;
          if (search_scores) nan_row[r] |= any_nan_or_inf(row, visible);
          const scalar_t row_max = max_lanes(row, visible, m[r]);
          if (visible == 0 || row_max == -std::numeric_limits<scalar_t>::infinity()) {
            std::fill(row, row + nk, scalar_t(0));
            continue;
          }
          const scalar_t rescale = exp_vectorizable(m[r] - row_max);  // ~0 on the first visible tile
          for (int64_t j = 0; j < visible; ++j) row[j] = exp_vectorizable(row[j] - row_max);
          std::fill(row + visible, row + nk, scalar_t(0));
          l[r] = l[r] * rescale + sum_lanes<scalar_t>(row, visible);  // the softmax sums undropped weights
          m[r] = row_max;
          scalar_t* acc_row = acc.data() + r * Ev;
          for (int64_t d = 0; d < Ev; ++d) acc_row[d] *= rescale;
          if (dropout.on) dropout.apply(row, visible, static_cast<uint64_t>((bh * Lq + i0 + r) * Lk + j0));
        }
        gemm<scalar_t>(false, false, nq, Ev, nk, 1.0, s.data(), kKeyBlock, v.at(b, hk, j0), v.row, 1.0, acc.data(),
                       Ev);
      }
      for (int64_t r = 0; r < nq; ++r) {
        scalar_t* out_row = out + (bh * Lq + i0 + r) * Ev;
        const scalar_t inv = l[r] > 0 ? scalar_t(1) / l[r] : scalar_t(0);
        const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
        for (int64_t d = 0; d < Ev; ++d) out_row[d] = nan_row[r] ? nan : acc[r * Ev + d] * inv;
        lse[bh * Lq + i0 + r] = nan_row[r] ? nan : m[r] + std::log(l[r]);  // -inf for a fully masked row
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
    bias.add(p, b, h, i0, nq, j0, nk);
    probabilities_from_lse(p, lse_all + bh * Lq, g, i0, nq, j0, nk);
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

AttentionCpuLoops CNNEXT_ATTENTION_LOOPS_FACTORY() { return {&forward_loop, &backward_loop}; }

}  // namespace cnnext
