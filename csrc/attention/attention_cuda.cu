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
#include "attention/attention.h"
#include "common.h"
#include "cuda_device.h"

namespace cnnext {
namespace {

constexpr int kRows = 64;                     // query (or key) rows per block, one per thread
constexpr int64_t kSharedBytes = 48 * 1024;   // default shared-memory budget per block

// The problem as the kernels see it. Blocks are numbered (batch*head, row tile) flattened into
// grid.x, which allows 2^31 - 1 blocks (grid.y would stop at 65,535 batch*heads).
template <typename acc_t>
struct Dims {
  int64_t Lq, Lk, D;
  acc_t scale;  // in the accumulation type: a float-rounded 1/sqrt(D) is off by ~3e-8 in float64
  bool causal;
  int64_t row_tiles;  // blocks per (batch, head)
  __device__ bool visible(int64_t i, int64_t j) const { return !causal || j <= i; }
  __device__ int64_t head() const { return blockIdx.x / row_tiles; }       // batch * heads + head
  __device__ int64_t row_tile() const { return blockIdx.x % row_tiles; }   // tile of kRows rows
};

template <typename acc_t>
Dims<acc_t> kernel_dims(const AttentionGeometry& g, int64_t rows) {
  return {g.q_len, g.k_len, g.head_dim, static_cast<acc_t>(g.scale), g.causal, ceil_div(rows, kRows)};
}

// One block per (batch*head, tile of kRows rows of length `rows`).
cuda::LaunchConfig row_tile_launch(const AttentionGeometry& g, int64_t rows, size_t shared_bytes) {
  const int64_t blocks = g.batch * g.heads * ceil_div(rows, kRows);
  TORCH_CHECK(blocks <= 2147483647, "attention (CUDA): batch * heads * ceil(length / ", kRows, ") = ", blocks,
              " blocks, more than a grid holds (2^31 - 1)");
  return {dim3(static_cast<unsigned>(blocks)), dim3(kRows), shared_bytes};
}

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
                               cuda::acc_t<scalar_t>* lse, Dims<cuda::acc_t<scalar_t>> dims, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* k_tile = cuda::dynamic_shared_memory<acc_t>();  // (tile, D)
  acc_t* v_tile = k_tile + tile * dims.D;                // (tile, D)
  const int64_t bh = dims.head(), tile0 = dims.row_tile() * kRows, i = tile0 + threadIdx.x, D = dims.D;
  const bool active = i < dims.Lq;
  const scalar_t* kb = k + bh * dims.Lk * D;
  const scalar_t* vb = v + bh * dims.Lk * D;
  acc_t q_row[kD], acc[kD];
  for (int d = 0; d < D; ++d) {
    q_row[d] = active ? static_cast<acc_t>(q[(bh * dims.Lq + i) * D + d]) : acc_t(0);
    acc[d] = 0;
  }
  acc_t m = -INFINITY, l = 0;
  const int64_t last_row = min(dims.Lq, tile0 + kRows) - 1;
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
__global__ void delta_kernel(const scalar_t* dout, const scalar_t* out, cuda::acc_t<scalar_t>* delta,
                             int64_t rows, int64_t D) {
  using acc_t = cuda::acc_t<scalar_t>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += static_cast<acc_t>(dout[r * D + d]) * static_cast<acc_t>(out[r * D + d]);
    delta[r] = sum;
  }
}

template <typename scalar_t, int kD>
__global__ void dq_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                          const cuda::acc_t<scalar_t>* lse, const cuda::acc_t<scalar_t>* delta,
                          scalar_t* dq, Dims<cuda::acc_t<scalar_t>> dims, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* k_tile = cuda::dynamic_shared_memory<acc_t>();
  acc_t* v_tile = k_tile + tile * dims.D;
  const int64_t bh = dims.head(), tile0 = dims.row_tile() * kRows, i = tile0 + threadIdx.x, D = dims.D;
  const bool active = i < dims.Lq;
  const int64_t row = bh * dims.Lq + i;
  acc_t q_row[kD], do_row[kD], dq_row[kD];
  for (int d = 0; d < D; ++d) {
    q_row[d] = active ? static_cast<acc_t>(q[row * D + d]) : acc_t(0);
    do_row[d] = active ? static_cast<acc_t>(dout[row * D + d]) : acc_t(0);
    dq_row[d] = 0;
  }
  const acc_t row_lse = active ? lse[row] : acc_t(0), row_delta = active ? delta[row] : acc_t(0);
  const int64_t last_row = min(dims.Lq, tile0 + kRows) - 1;
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
                            const cuda::acc_t<scalar_t>* lse, const cuda::acc_t<scalar_t>* delta,
                            scalar_t* dk, scalar_t* dv, Dims<cuda::acc_t<scalar_t>> dims, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* q_tile = cuda::dynamic_shared_memory<acc_t>();
  acc_t* do_tile = q_tile + tile * dims.D;
  const int64_t bh = dims.head(), tile0 = dims.row_tile() * kRows, j = tile0 + threadIdx.x, D = dims.D;
  const bool active = j < dims.Lk;
  const int64_t row = bh * dims.Lk + j;
  acc_t k_row[kD], v_row[kD], dk_row[kD], dv_row[kD];
  for (int d = 0; d < D; ++d) {
    k_row[d] = active ? static_cast<acc_t>(k[row * D + d]) : acc_t(0);
    v_row[d] = active ? static_cast<acc_t>(v[row * D + d]) : acc_t(0);
    dk_row[d] = dv_row[d] = 0;
  }
  // Causal: queries before this block's first key see none of its keys.
  const int64_t i_begin = dims.causal ? (min(tile0, dims.Lq) / tile) * tile : 0;
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

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, cuda::kDeviceType); }

at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

AttentionOutputs attention_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::optional<double> scale, bool causal) {
  const auto g = attention_geometry(q, k, v, scale, causal);
  check_cuda(q, "attention: q");
  const cuda::DeviceGuard guard(q.device());
  auto out = cuda::empty({g.batch, g.heads, g.q_len, g.head_dim}, q.options());
  auto lse = cuda::empty({g.batch, g.heads, g.q_len}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_forward_cuda", [&] {
    using acc_t = cuda::acc_t<scalar_t>;
    const int tile = tile_rows<acc_t>(g.head_dim);
    const auto config = row_tile_launch(g, g.q_len, 2 * tile * g.head_dim * sizeof(acc_t));
    with_head_dim(g.head_dim, [&](auto head_dim) {
      cuda::launch<forward_kernel<scalar_t, decltype(head_dim)::value>>(
          config, qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), kernel_dims<acc_t>(g, g.q_len), tile);
    });
  });
  return {out, lse};
}

AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                       std::optional<double> scale, bool causal) {
  const auto g = attention_backward_geometry(grad_out, q, k, v, out, lse, scale, causal);
  check_cuda(q, "_attention_backward: q");
  const cuda::DeviceGuard guard(q.device());
  auto dq = cuda::empty(q.sizes(), q.options()), dk = cuda::empty(k.sizes(), k.options());
  auto dv = cuda::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto doc = grad_out.contiguous(), oc = out.contiguous(), lc = lse.contiguous();
  const int64_t BH = g.batch * g.heads;
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_backward_cuda", [&] {
    using acc_t = cuda::acc_t<scalar_t>;
    auto delta = cuda::empty({BH * g.q_len}, lc.options());
    const int64_t rows = BH * g.q_len;
    cuda::launch<delta_kernel<scalar_t>>({static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 256), 65535)), 256},
                                         doc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(),
                                         delta.mutable_data_ptr<acc_t>(), rows, g.head_dim);
    const int tile = tile_rows<acc_t>(g.head_dim);
    const size_t shared = 2 * tile * g.head_dim * sizeof(acc_t);
    with_head_dim(g.head_dim, [&](auto head_dim) {
      constexpr int kD = decltype(head_dim)::value;
      cuda::launch<dq_kernel<scalar_t, kD>>(
          row_tile_launch(g, g.q_len, shared), doc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
          kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), lc.const_data_ptr<acc_t>(),
          delta.const_data_ptr<acc_t>(), dq.mutable_data_ptr<scalar_t>(), kernel_dims<acc_t>(g, g.q_len), tile);
      cuda::launch<dkdv_kernel<scalar_t, kD>>(
          row_tile_launch(g, g.k_len, shared), doc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
          kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), lc.const_data_ptr<acc_t>(),
          delta.const_data_ptr<acc_t>(), dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(),
          kernel_dims<acc_t>(g, g.k_len), tile);
    });
  });
  return {dq, dk, dv};
}

}  // namespace cnnext
