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
// vectorise as min/max thanks to -fno-trapping-math, see setup.py). float64 keeps std::exp.
inline float exp_vectorizable(float x) {
  x = x < -87.0f ? -87.0f : x;  // also maps -inf (masked or first-tile rescale) to ~0
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
  return p * two_to_n;
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

// P[r][j] = exp(S[r][j] - lse[r]) for the keys query row i0 + r may see in tile [j0, j0 + nk), else 0.
template <typename scalar_t>
void probabilities_from_lse(scalar_t* s, const scalar_t* lse, const AttentionGeometry& g, int64_t i0, int64_t nq,
                            int64_t j0, int64_t nk) {
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t visible = std::clamp<int64_t>(g.key_end(i0 + r) - j0, 0, nk);
    scalar_t* row = s + r * kKeyBlock;
    const scalar_t row_lse = lse[i0 + r];
    for (int64_t j = 0; j < visible; ++j) row[j] = exp_vectorizable(row[j] - row_lse);
    std::fill(row + visible, row + nk, scalar_t(0));
  }
}

template <typename scalar_t>
void forward(const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out, scalar_t* lse,
             const AttentionGeometry& g) {
  const int64_t D = g.head_dim, Lq = g.q_len, Lk = g.k_len, q_blocks = ceil_div(Lq, kQueryBlock);
  at::parallel_for(0, g.batch * g.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> s(kQueryBlock * kKeyBlock), acc(kQueryBlock * D), m(kQueryBlock), l(kQueryBlock);
    std::vector<char> nan_row(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, i0 = (task % q_blocks) * kQueryBlock, nq = std::min(kQueryBlock, Lq - i0);
      const scalar_t* q_blk = q + (bh * Lq + i0) * D;  // (nq, D)
      const bool search_scores = !all_finite(q_blk, nq * D) || !all_finite(k + bh * Lk * D, Lk * D);
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(l.begin(), l.end(), scalar_t(0));
      std::fill(nan_row.begin(), nan_row.end(), 0);
      const int64_t k_end = g.key_end(i0 + nq - 1);
      for (int64_t j0 = 0; j0 < k_end; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, k_end - j0);
        const scalar_t* k_tile = k + (bh * Lk + j0) * D;  // (nk, D)
        gemm<scalar_t>(false, true, nq, nk, D, g.scale, q_blk, D, k_tile, D, 0.0, s.data(), kKeyBlock);
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
          l[r] = l[r] * rescale + sum_lanes<scalar_t>(row, visible);
          m[r] = row_max;
          scalar_t* acc_row = acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) acc_row[d] *= rescale;
        }
        const scalar_t* v_tile = v + (bh * Lk + j0) * D;
        gemm<scalar_t>(false, false, nq, D, nk, 1.0, s.data(), kKeyBlock, v_tile, D, 1.0, acc.data(), D);
      }
      for (int64_t r = 0; r < nq; ++r) {
        scalar_t* out_row = out + (bh * Lq + i0 + r) * D;
        const scalar_t inv = l[r] > 0 ? scalar_t(1) / l[r] : scalar_t(0);
        const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
        for (int64_t d = 0; d < D; ++d) out_row[d] = nan_row[r] ? nan : acc[r * D + d] * inv;
        lse[bh * Lq + i0 + r] = nan_row[r] ? nan : m[r] + std::log(l[r]);
      }
    }
  });
}

template <typename scalar_t>
void backward(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* out,
              const scalar_t* lse_all, scalar_t* dq, scalar_t* dk, scalar_t* dv, const AttentionGeometry& g) {
  const int64_t D = g.head_dim, Lq = g.q_len, Lk = g.k_len, BH = g.batch * g.heads;
  // delta[i] = rowsum(dO_i * O_i), the softmax-gradient correction of each query row.
  std::vector<scalar_t> delta(BH * Lq);
  at::parallel_for(0, BH * Lq, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum = 0;
      for (int64_t d = 0; d < D; ++d) sum += dout[i * D + d] * out[i * D + d];
      delta[i] = sum;
    }
  });

  // P, then dS = P * (dO v^T - delta), for query block [i0, i0 + nq) x key tile [j0, j0 + nk).
  auto scores_and_grads = [&](int64_t bh, int64_t i0, int64_t nq, int64_t j0, int64_t nk, scalar_t* p, scalar_t* ds) {
    const scalar_t* q_blk = q + (bh * Lq + i0) * D;
    const scalar_t* do_blk = dout + (bh * Lq + i0) * D;
    gemm<scalar_t>(false, true, nq, nk, D, g.scale, q_blk, D, k + (bh * Lk + j0) * D, D, 0.0, p, kKeyBlock);
    probabilities_from_lse(p, lse_all + bh * Lq, g, i0, nq, j0, nk);
    gemm<scalar_t>(false, true, nq, nk, D, 1.0, do_blk, D, v + (bh * Lk + j0) * D, D, 0.0, ds, kKeyBlock);
    for (int64_t r = 0; r < nq; ++r)
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t at = r * kKeyBlock + j;
        ds[at] = p[at] * (ds[at] - delta[bh * Lq + i0 + r]);
      }
  };

  // One pass: a task owns a run of key tiles of one (batch, head), so it writes their dK and dV
  // alone and adds dS k * scale into dQ. With at least as many heads as threads a task takes all
  // of a head's key tiles and owns its dQ; otherwise the key tiles are split into `chunks` and
  // each chunk adds into its own dQ copy, summed in chunk order at the end (deterministic).
  const int64_t k_tiles = ceil_div(Lk, kKeyBlock), threads = at::get_num_threads();
  const int64_t chunks = BH >= threads ? 1 : std::min(k_tiles, ceil_div(threads, BH));
  const int64_t tiles_per_chunk = ceil_div(k_tiles, chunks);
  std::vector<scalar_t> dq_chunks(chunks > 1 ? chunks * BH * Lq * D : 0, scalar_t(0));
  if (chunks == 1) std::fill(dq, dq + BH * Lq * D, scalar_t(0));
  at::parallel_for(0, BH * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> p(kQueryBlock * kKeyBlock), ds(kQueryBlock * kKeyBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / chunks, chunk = task % chunks;
      scalar_t* dq_head = (chunks == 1 ? dq : dq_chunks.data() + chunk * BH * Lq * D) + bh * Lq * D;
      const int64_t first_tile = chunk * tiles_per_chunk, last_tile = std::min(k_tiles, first_tile + tiles_per_chunk);
      for (int64_t tile = first_tile; tile < last_tile; ++tile) {
        const int64_t j0 = tile * kKeyBlock, nk = std::min(kKeyBlock, Lk - j0);
        const scalar_t* k_tile = k + (bh * Lk + j0) * D;
        scalar_t* dk_tile = dk + (bh * Lk + j0) * D;
        scalar_t* dv_tile = dv + (bh * Lk + j0) * D;
        std::fill(dk_tile, dk_tile + nk * D, scalar_t(0));
        std::fill(dv_tile, dv_tile + nk * D, scalar_t(0));
        // Causal: query rows before j0 see none of this tile.
        const int64_t first_block = g.causal ? (std::min(j0, Lq) / kQueryBlock) * kQueryBlock : 0;
        for (int64_t i0 = first_block; i0 < Lq; i0 += kQueryBlock) {
          const int64_t nq = std::min(kQueryBlock, Lq - i0);
          scores_and_grads(bh, i0, nq, j0, nk, p.data(), ds.data());
          const scalar_t* do_blk = dout + (bh * Lq + i0) * D;
          gemm<scalar_t>(true, false, nk, D, nq, 1.0, p.data(), kKeyBlock, do_blk, D, 1.0, dv_tile, D);
          gemm<scalar_t>(true, false, nk, D, nq, g.scale, ds.data(), kKeyBlock, q + (bh * Lq + i0) * D, D, 1.0,
                         dk_tile, D);
          gemm<scalar_t>(false, false, nq, D, nk, g.scale, ds.data(), kKeyBlock, k_tile, D, 1.0, dq_head + i0 * D, D);
        }
      }
    }
  });
  for (int64_t chunk = 0; chunk < chunks && chunks > 1; ++chunk) {
    const scalar_t* part = dq_chunks.data() + chunk * BH * Lq * D;
    for (int64_t i = 0; i < BH * Lq * D; ++i) dq[i] = chunk == 0 ? part[i] : dq[i] + part[i];
  }
}

void forward_loop(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                  const at::Tensor& lse, const AttentionGeometry& g) {
  CNNEXT_DISPATCH_CPU_TYPES(q.scalar_type(), "attention_forward_cpu", [&] {
    forward(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(), g);
  });
}

void backward_loop(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                   const at::Tensor& dv, const AttentionGeometry& g) {
  CNNEXT_DISPATCH_CPU_TYPES(q.scalar_type(), "attention_backward_cpu", [&] {
    backward(dout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
             v.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(),
             dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), g);
  });
}

}  // namespace

AttentionCpuLoops CNNEXT_ATTENTION_LOOPS_FACTORY() { return {&forward_loop, &backward_loop}; }

}  // namespace cnnext
