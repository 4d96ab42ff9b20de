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
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

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

#include "cpu_isa_target.h"  // last include: what follows is compiled for this build's level

// Row arithmetic on 16-float vectors (exp, log, maxima, sums, finiteness), part of this build.
#include "attention/attention_cpu_rows.h"

// The Fortran BLAS that torch's CPU library carries and exports (MKL on x86-64). Declared weak:
// where a torch build lacks them, gemm() below falls back to at::mm on tensor views, which adds
// a dispatcher call per tile but stays correct.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
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
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
          const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c,
          int64_t ldc) {
  const char ta = transpose_a ? 'T' : 'N', tb = transpose_b ? 'T' : 'N';
  const int mi = m, ni = n, ki = k, lda_i = lda, ldb_i = ldb, ldc_i = ldc;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ != nullptr)
      return sgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
  } else {
    if (dgemm_ != nullptr)
      return dgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto view = [&](const scalar_t* p, int64_t rows, int64_t cols, int64_t ld, bool transpose) {
    auto t = at::from_blob(const_cast<scalar_t*>(p), {transpose ? cols : rows, transpose ? rows : cols},
                           {ld, 1}, options);
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

// P[r][j] = exp(S[r][j] - lse[r]) for the keys query row i0 + r may see in tile [j0, j0 + nk), else 0
// (also for a fully masked row, whose lse is -inf).
template <typename scalar_t>
void probabilities_from_lse(scalar_t* s, int64_t ld, const scalar_t* lse, const AttentionGeometry& g,
                            int64_t i0, int64_t nq, int64_t j0, int64_t nk) {
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
  void add(scalar_t* s, int64_t ld, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0,
           int64_t nk) const {
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
void forward(const Rows<const scalar_t>& q, const Rows<const scalar_t>& k, const Rows<const scalar_t>& v,
             scalar_t* out, scalar_t* lse, const AttentionGeometry& g, const AttentionOptions& options) {
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
      const int64_t bh = task / q_blocks, i0 = (task % q_blocks) * tiles.rows,
                    nq = std::min(tiles.rows, Lq - i0);
      const int64_t b = bh / g.heads, h = bh % g.heads, hk = h / g.group();
      const scalar_t* q_blk = q.at(b, h, i0);  // (nq, E), rows q.row apart
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(l.begin(), l.end(), scalar_t(0));
      std::fill(nan_row.begin(), nan_row.end(), 0);
      const int64_t k_end = g.key_end(i0 + nq - 1);
      for (int64_t j0 = 0; j0 < k_end; j0 += tiles.keys) {
        const int64_t nk = std::min(tiles.keys, k_end - j0);
        gemm<scalar_t>(false, true, nq, nk, E, g.scale, q_blk, q.row, k.at(b, hk, j0), k.row, 0.0, s.data(),
                       ld);
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
        gemm<scalar_t>(false, false, nq, Ev, nk, 1.0, s.data(), ld, v.at(b, hk, j0), v.row, 1.0, acc.data(),
                       Ev);
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

// delta[i] = rowsum(dO_i * O_i) for each of the `rows` query rows: the softmax gradient's correction.
template <typename scalar_t>
std::vector<scalar_t> softmax_corrections(const scalar_t* dout, const scalar_t* out, int64_t rows,
                                          int64_t Ev) {
  std::vector<scalar_t> delta(rows);
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum = 0;
      for (int64_t d = 0; d < Ev; ++d) sum += dout[i * Ev + d] * out[i * Ev + d];
      delta[i] = sum;
    }
  });
  return delta;
}

// total = parts[0] + parts[1] + ... (`count` arrays of n), added in that order: deterministic.
template <typename scalar_t>
void sum_in_order(const scalar_t* parts, int64_t count, int64_t n, scalar_t* total) {
  for (int64_t part = 0; part < count; ++part) {
    const scalar_t* values = parts + part * n;
    for (int64_t i = 0; i < n; ++i) total[i] = part == 0 ? values[i] : total[i] + values[i];
  }
}

template <typename scalar_t>
void backward(const scalar_t* dout, const Rows<const scalar_t>& q, const Rows<const scalar_t>& k,
              const Rows<const scalar_t>& v, const scalar_t* out, const scalar_t* lse_all, scalar_t* dq,
              scalar_t* dk, scalar_t* dv, scalar_t* dbias, const AttentionGeometry& g,
              const AttentionOptions& options) {
  const int64_t E = g.head_dim, Ev = g.v_dim, Lq = g.q_len, Lk = g.k_len, BH = g.batch * g.heads;
  const int64_t BHk = g.batch * g.kv_heads, group = g.group();
  const Bias<scalar_t> bias = make_bias<scalar_t>(options);
  const Dropout dropout = make_dropout(options);
  const std::vector<scalar_t> delta = softmax_corrections(dout, out, BH * Lq, Ev);

  // For query block [i0, i0 + nq) of head (b, h) x key tile [j0, j0 + nk): P (dropped, P * Z, in
  // p: what dV multiplies), and dS = P * (dO v^T * Z - delta) in ds (also written to dbias).
  auto scores_and_grads = [&](int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                              scalar_t* p, scalar_t* ds) {
    const int64_t bh = b * g.heads + h, hk = h / group;
    const scalar_t* do_blk = dout + (bh * Lq + i0) * Ev;
    gemm<scalar_t>(false, true, nq, nk, E, g.scale, q.at(b, h, i0), q.row, k.at(b, hk, j0), k.row, 0.0, p,
                   kKeyBlock);
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
      const int64_t first_tile = chunk * tiles_per_chunk,
                    last_tile = std::min(k_tiles, first_tile + tiles_per_chunk);
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
            gemm<scalar_t>(true, false, nk, E, nq, g.scale, ds.data(), kKeyBlock, q.at(b, h, i0), q.row, 1.0,
                           dk_tile, E);
            gemm<scalar_t>(false, false, nq, E, nk, g.scale, ds.data(), kKeyBlock, k.at(b, hk, j0), k.row,
                           1.0, dq_all + (bh * Lq + i0) * E, E);
          }
        }
      }
    }
  });
  if (chunks > 1) sum_in_order(dq_chunks.data(), chunks, BH * Lq * E, dq);
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
