// Attention on CUDA: one block per (batch*head, tile of kRows query rows), one thread per query
// row; key/value tiles are staged in shared memory by the whole block and every thread runs the
// online softmax over them (running max m, sum l, accumulator rescaled when m grows). The row's
// q, accumulator and gradients live in per-thread arrays of kD (the head dim rounded up to 64,
// 128 or 256). Saved for backward: out and lse (float32 for half/bfloat16, as the accumulators).
// Backward (FlashAttention-2 recomputation, no atomics, deterministic):
//   delta kernel   delta_i = rowsum(dO_i * O_i)
//   dq kernel      per query row: dq_i = sum_j P_ij (dP_ij - delta_i) k_j * scale
//   dkdv kernel    per key row, query tiles staged in shared memory:
//                  dv_j = sum_i P_ij dO_i,  dk_j = sum_i P_ij (dP_ij - delta_i) q_i * scale
// Written for correctness first: per-thread rows and scalar dot products, no tensor cores.
#include <ATen/AccumulateType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention/attention.h"
#include "common.h"

namespace cnnext {
namespace {

constexpr int kRows = 64;                     // query (or key) rows per block, one per thread
constexpr int64_t kSharedBytes = 48 * 1024;   // default shared-memory budget per block

struct Dims {
  int64_t Lq, Lk, D;
  float scale;
  bool causal;
  __device__ bool visible(int64_t i, int64_t j) const { return !causal || j <= i; }
};

// Rows of a staged tile that fit the shared-memory budget, for two (tile, D) arrays of acc_t.
template <typename acc_t>
int tile_rows(int64_t D) {
  return static_cast<int>(std::clamp<int64_t>(kSharedBytes / (2 * D * int64_t(sizeof(acc_t))), 1, 32));
}

// Copies rows [r0, r0 + n) of a (L, D) matrix into shared memory (as acc_t), zero beyond L.
template <typename scalar_t, typename acc_t>
__device__ void stage(acc_t* dst, const scalar_t* src, int64_t r0, int n, int64_t L, int64_t D) {
  for (int64_t e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int64_t r = r0 + e / D;
    dst[e] = r < L ? static_cast<acc_t>(src[r * D + e % D]) : acc_t(0);
  }
}

template <typename scalar_t, int kD>
__global__ void forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out,
                               at::acc_type<scalar_t, true>* lse, Dims dims, int tile) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ unsigned char shared_raw[];
  acc_t* k_tile = reinterpret_cast<acc_t*>(shared_raw);  // (tile, D)
  acc_t* v_tile = k_tile + tile * dims.D;                // (tile, D)
  const int64_t bh = blockIdx.y, i = int64_t(blockIdx.x) * kRows + threadIdx.x, D = dims.D;
  const bool active = i < dims.Lq;
  const scalar_t* kb = k + bh * dims.Lk * D;
  const scalar_t* vb = v + bh * dims.Lk * D;
  acc_t q_row[kD], acc[kD];
  for (int d = 0; d < D; ++d) {
    q_row[d] = active ? static_cast<acc_t>(q[(bh * dims.Lq + i) * D + d]) : acc_t(0);
    acc[d] = 0;
  }
  acc_t m = -INFINITY, l = 0;
  const int64_t last_row = min(dims.Lq, int64_t(blockIdx.x + 1) * kRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += tile) {
    __syncthreads();
    stage(k_tile, kb, j0, tile, dims.Lk, D);
    stage(v_tile, vb, j0, tile, dims.Lk, D);
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < tile && j0 + jj < dims.Lk; ++jj) {
      if (!dims.visible(i, j0 + jj)) break;
      acc_t s = 0;
      for (int d = 0; d < D; ++d) s += q_row[d] * k_tile[jj * D + d];
      s *= dims.scale;
      const acc_t m_new = max(m, s), rescale = exp(m - m_new), p = exp(s - m_new);
      l = l * rescale + p;
      for (int d = 0; d < D; ++d) acc[d] = acc[d] * rescale + p * v_tile[jj * D + d];
      m = m_new;
    }
  }
  if (!active) return;
  for (int d = 0; d < D; ++d) out[(bh * dims.Lq + i) * D + d] = static_cast<scalar_t>(acc[d] / l);
  lse[bh * dims.Lq + i] = m + log(l);
}

template <typename scalar_t>
__global__ void delta_kernel(const scalar_t* dout, const scalar_t* out, at::acc_type<scalar_t, true>* delta,
                             int64_t rows, int64_t D) {
  using acc_t = at::acc_type<scalar_t, true>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += static_cast<acc_t>(dout[r * D + d]) * static_cast<acc_t>(out[r * D + d]);
    delta[r] = sum;
  }
}

template <typename scalar_t, int kD>
__global__ void dq_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                          const at::acc_type<scalar_t, true>* lse, const at::acc_type<scalar_t, true>* delta,
                          scalar_t* dq, Dims dims, int tile) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ unsigned char shared_raw[];
  acc_t* k_tile = reinterpret_cast<acc_t*>(shared_raw);
  acc_t* v_tile = k_tile + tile * dims.D;
  const int64_t bh = blockIdx.y, i = int64_t(blockIdx.x) * kRows + threadIdx.x, D = dims.D;
  const bool active = i < dims.Lq;
  const int64_t row = bh * dims.Lq + i;
  acc_t q_row[kD], do_row[kD], dq_row[kD];
  for (int d = 0; d < D; ++d) {
    q_row[d] = active ? static_cast<acc_t>(q[row * D + d]) : acc_t(0);
    do_row[d] = active ? static_cast<acc_t>(dout[row * D + d]) : acc_t(0);
    dq_row[d] = 0;
  }
  const acc_t row_lse = active ? lse[row] : acc_t(0), row_delta = active ? delta[row] : acc_t(0);
  const int64_t last_row = min(dims.Lq, int64_t(blockIdx.x + 1) * kRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += tile) {
    __syncthreads();
    stage(k_tile, k + bh * dims.Lk * D, j0, tile, dims.Lk, D);
    stage(v_tile, v + bh * dims.Lk * D, j0, tile, dims.Lk, D);
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < tile && j0 + jj < dims.Lk; ++jj) {
      if (!dims.visible(i, j0 + jj)) break;
      acc_t s = 0, dp = 0;
      for (int d = 0; d < D; ++d) {
        s += q_row[d] * k_tile[jj * D + d];
        dp += do_row[d] * v_tile[jj * D + d];
      }
      const acc_t p = exp(s * dims.scale - row_lse), ds = p * (dp - row_delta) * dims.scale;
      for (int d = 0; d < D; ++d) dq_row[d] += ds * k_tile[jj * D + d];
    }
  }
  if (!active) return;
  for (int d = 0; d < D; ++d) dq[row * D + d] = static_cast<scalar_t>(dq_row[d]);
}

template <typename scalar_t, int kD>
__global__ void dkdv_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                            const at::acc_type<scalar_t, true>* lse, const at::acc_type<scalar_t, true>* delta,
                            scalar_t* dk, scalar_t* dv, Dims dims, int tile) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ unsigned char shared_raw[];
  acc_t* q_tile = reinterpret_cast<acc_t*>(shared_raw);
  acc_t* do_tile = q_tile + tile * dims.D;
  const int64_t bh = blockIdx.y, j = int64_t(blockIdx.x) * kRows + threadIdx.x, D = dims.D;
  const bool active = j < dims.Lk;
  const int64_t row = bh * dims.Lk + j;
  acc_t k_row[kD], v_row[kD], dk_row[kD], dv_row[kD];
  for (int d = 0; d < D; ++d) {
    k_row[d] = active ? static_cast<acc_t>(k[row * D + d]) : acc_t(0);
    v_row[d] = active ? static_cast<acc_t>(v[row * D + d]) : acc_t(0);
    dk_row[d] = dv_row[d] = 0;
  }
  // Causal: queries before this block's first key see none of its keys.
  const int64_t i_begin = dims.causal ? (min(int64_t(blockIdx.x) * kRows, dims.Lq) / tile) * tile : 0;
  for (int64_t i0 = i_begin; i0 < dims.Lq; i0 += tile) {
    __syncthreads();
    stage(q_tile, q + bh * dims.Lq * D, i0, tile, dims.Lq, D);
    stage(do_tile, dout + bh * dims.Lq * D, i0, tile, dims.Lq, D);
    __syncthreads();
    if (!active) continue;
    for (int ii = 0; ii < tile && i0 + ii < dims.Lq; ++ii) {
      const int64_t i = i0 + ii;
      if (!dims.visible(i, j)) continue;
      acc_t s = 0, dp = 0;
      for (int d = 0; d < D; ++d) {
        s += q_tile[ii * D + d] * k_row[d];
        dp += do_tile[ii * D + d] * v_row[d];
      }
      const acc_t p = exp(s * dims.scale - lse[bh * dims.Lq + i]);
      const acc_t ds = p * (dp - delta[bh * dims.Lq + i]) * dims.scale;
      for (int d = 0; d < D; ++d) {
        dv_row[d] += p * do_tile[ii * D + d];
        dk_row[d] += ds * q_tile[ii * D + d];
      }
    }
  }
  if (!active) return;
  for (int d = 0; d < D; ++d) {
    dk[row * D + d] = static_cast<scalar_t>(dk_row[d]);
    dv[row * D + d] = static_cast<scalar_t>(dv_row[d]);
  }
}

// Calls fn.template operator()<kD>() with kD the head dim rounded up to 64, 128 or 256.
template <typename Fn>
void with_head_dim(int64_t D, const Fn& fn) {
  if (D <= 64) {
    fn(std::integral_constant<int, 64>{});
  } else if (D <= 128) {
    fn(std::integral_constant<int, 128>{});
  } else {
    fn(std::integral_constant<int, 256>{});
  }
}

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CUDA); }

at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

AttentionOutputs attention_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::optional<double> scale, bool causal) {
  const auto g = attention_geometry(q, k, v, scale, causal);
  check_cuda(q, "attention: q");
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({g.batch, g.heads, g.q_len, g.head_dim}, q.options());
  auto lse = at::empty({g.batch, g.heads, g.q_len}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const Dims dims{g.q_len, g.k_len, g.head_dim, static_cast<float>(g.scale), g.causal};
  const dim3 grid(static_cast<unsigned>(ceil_div(g.q_len, kRows)), static_cast<unsigned>(g.batch * g.heads));
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const int tile = tile_rows<acc_t>(g.head_dim);
    const size_t shared = 2 * tile * g.head_dim * sizeof(acc_t);
    with_head_dim(g.head_dim, [&](auto head_dim) {
      forward_kernel<scalar_t, decltype(head_dim)::value><<<grid, kRows, shared, c10::cuda::getCurrentCUDAStream()>>>(
          qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), dims, tile);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                       std::optional<double> scale, bool causal) {
  const auto g = attention_backward_geometry(grad_out, q, k, v, out, lse, scale, causal);
  check_cuda(q, "_attention_backward: q");
  const c10::cuda::CUDAGuard guard(q.device());
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto doc = grad_out.contiguous(), oc = out.contiguous(), lc = lse.contiguous();
  const Dims dims{g.q_len, g.k_len, g.head_dim, static_cast<float>(g.scale), g.causal};
  const int64_t BH = g.batch * g.heads;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    auto delta = at::empty({BH * g.q_len}, lc.options());
    const int64_t rows = BH * g.q_len;
    delta_kernel<scalar_t><<<static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 256), 65535)), 256, 0, stream>>>(
        doc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(), delta.mutable_data_ptr<acc_t>(), rows,
        g.head_dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int tile = tile_rows<acc_t>(g.head_dim);
    const size_t shared = 2 * tile * g.head_dim * sizeof(acc_t);
    with_head_dim(g.head_dim, [&](auto head_dim) {
      constexpr int kD = decltype(head_dim)::value;
      const dim3 q_grid(static_cast<unsigned>(ceil_div(g.q_len, kRows)), static_cast<unsigned>(BH));
      dq_kernel<scalar_t, kD><<<q_grid, kRows, shared, stream>>>(
          doc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
          vc.const_data_ptr<scalar_t>(), lc.const_data_ptr<acc_t>(), delta.const_data_ptr<acc_t>(),
          dq.mutable_data_ptr<scalar_t>(), dims, tile);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const dim3 k_grid(static_cast<unsigned>(ceil_div(g.k_len, kRows)), static_cast<unsigned>(BH));
      dkdv_kernel<scalar_t, kD><<<k_grid, kRows, shared, stream>>>(
          doc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
          vc.const_data_ptr<scalar_t>(), lc.const_data_ptr<acc_t>(), delta.const_data_ptr<acc_t>(),
          dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), dims, tile);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dq, dk, dv};
}

}  // namespace cnnext
