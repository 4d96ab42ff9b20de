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
#include "cuda_tensor_cores.h"

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

// One block of `threads` per (batch*head, tile of kRows rows of length `rows`).
cuda::LaunchConfig row_tile_launch(const AttentionGeometry& g, int64_t rows, size_t shared_bytes,
                                   int threads = kRows) {
  const int64_t blocks = g.batch * g.heads * ceil_div(rows, kRows);
  TORCH_CHECK(blocks <= 2147483647, "attention (CUDA): batch * heads * ceil(length / ", kRows, ") = ", blocks,
              " blocks, more than a grid holds (2^31 - 1)");
  return {dim3(static_cast<unsigned>(blocks)), dim3(threads), shared_bytes};
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

// ---- forward, tensor_cores variant (float16 / bfloat16 on sm_80+, and the emulator) -------------
//
// FlashAttention-2's split: a block of kTcWarps warps takes kTcQueryRows query rows of one
// (batch, head), each warp 16 of them. The block's Q tile stays in shared memory; K and V tiles of
// kTcKeyRows<kD> keys are staged in turn. Per key tile a warp computes its S = Q K^T (16 x keys) with
// mma_m16n8k16 into float fragments, runs the online softmax on them in registers (base-2: scores
// pre-multiplied by scale * log2(e), exp2), rounds P to scalar_t and multiplies P V into its float
// O fragments (16 x kD); S's accumulator fragments are laid out exactly as P's A fragments need
// (cuda_tensor_cores.h), so P never leaves registers. Each lane holds rows g and g + 8 of its warp's
// 16 (g = lane / 4); the four lanes of a quad share a row and combine row max and sum with two
// xor-shuffles. Head dims are padded with zeros to kD (32, 64, 128 or 256) in shared memory, so
// every register array has a compile-time size and constant indices.
constexpr int kTcWarps = 4, kTcQueryRows = 16 * kTcWarps, kTcThreads = 32 * kTcWarps;
static_assert(kTcQueryRows == kRows, "Dims numbers row tiles of kRows rows");
template <int kD>
inline constexpr int kTcKeyRows = kD <= 64 ? 64 : 32;
template <int kD>
inline constexpr int kTcRowStride = kD + 8;  // 16-bit elements; +8 spreads fragment loads over banks

template <int kD>
constexpr size_t tensor_core_forward_shared_bytes() {
  return size_t{kTcQueryRows + 2 * kTcKeyRows<kD>} * kTcRowStride<kD> * sizeof(uint16_t);
}

// Rows [r0, r0 + rows) of a (L, D) matrix into a (rows, kD) shared tile of 16-bit patterns, zero
// past L and past D.
template <int kD, typename scalar_t>
__device__ __forceinline__ void stage_bits(uint16_t* tile, const scalar_t* src, int64_t r0, int rows, int64_t L,
                                           int64_t D) {
  for (int e = threadIdx.x; e < rows * kD; e += kTcThreads) {
    const int r = e / kD, d = e % kD;  // kD is a power of two: a shift and a mask
    tile[r * kTcRowStride<kD> + d] = (r0 + r < L && d < D) ? src[(r0 + r) * D + d].x : uint16_t{0};
  }
}

template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_floats(float low, float high) {
  return cuda::pack_pair(static_cast<scalar_t>(low), static_cast<scalar_t>(high));
}

template <typename scalar_t, int kD>
__global__ void __launch_bounds__(kTcThreads)
    tensor_core_forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out, float* lse,
                               Dims<float> dims) {
  constexpr int kKeys = kTcKeyRows<kD>, kStride = kTcRowStride<kD>;
  constexpr int kKeyTiles = kKeys / 8, kDimTiles = kD / 8;  // 8-wide mma n tiles
  uint16_t* q_tile = cuda::dynamic_shared_memory<uint16_t>();  // (kTcQueryRows, kD)
  uint16_t* k_tile = q_tile + kTcQueryRows * kStride;          // (kKeys, kD)
  uint16_t* v_tile = k_tile + kKeys * kStride;                 // (kKeys, kD)
  using cuda::pack_pair;

  const int64_t bh = dims.head(), q0 = dims.row_tile() * kTcQueryRows, D = dims.D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = 16 * warp;                              // the warp's first row in the tile
  const int64_t rows[2] = {q0 + wm + g, q0 + wm + g + 8};  // this lane's two query rows
  const float scale_log2 = dims.scale * 1.4426950408889634f;

  stage_bits<kD>(q_tile, q + bh * dims.Lq * D, q0, kTcQueryRows, dims.Lq, D);
  float o[kDimTiles][4];
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n)
#pragma unroll
    for (int f = 0; f < 4; ++f) o[n][f] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's share of the row sums

  const int64_t last_row = min(dims.Lq, q0 + kTcQueryRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += kKeys) {
    __syncthreads();  // the previous tile's readers are done (and, first time, nothing to wait for)
    stage_bits<kD>(k_tile, k + bh * dims.Lk * D, j0, kKeys, dims.Lk, D);
    stage_bits<kD>(v_tile, v + bh * dims.Lk * D, j0, kKeys, dims.Lk, D);
    __syncthreads();

    // S = Q K^T for the warp's 16 rows x kKeys keys. B = K^T: B[k][n] = K[n][k], K's rows are B's columns.
    float s[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int f = 0; f < 4; ++f) s[n][f] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint16_t* qa = q_tile + (wm + g) * kStride + 16 * kk + 2 * t;
      const uint32_t a[4] = {pack_pair(qa[0], qa[1]), pack_pair(qa[8 * kStride], qa[8 * kStride + 1]),
                             pack_pair(qa[8], qa[9]), pack_pair(qa[8 * kStride + 8], qa[8 * kStride + 9])};
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        const uint16_t* kb = k_tile + (8 * n + g) * kStride + 16 * kk + 2 * t;
        const uint32_t b[2] = {pack_pair(kb[0], kb[1]), pack_pair(kb[8], kb[9])};
        cuda::mma_m16n8k16<scalar_t>(s[n], a, b, s[n]);
      }
    }

    // Online softmax over the tile, in base 2; masked scores (past Lk, causal) are -inf.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int64_t j = j0 + 8 * n + 2 * t + (f % 2), i = rows[f / 2];
        s[n][f] = (j < dims.Lk && dims.visible(i, j)) ? s[n][f] * scale_log2 : -INFINITY;
        tile_max[f / 2] = fmaxf(tile_max[f / 2], s[n][f]);
      }
    }
    float rescale[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(m[r], tile_max[r]);
      base[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet: all p are 0
      rescale[r] = exp2f(m[r] - base[r]);
      m[r] = m_new;
      l[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        s[n][f] = exp2f(s[n][f] - base[f / 2]);  // now P
        l[f / 2] += s[n][f];
      }
    }
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n)
#pragma unroll
      for (int f = 0; f < 4; ++f) o[n][f] *= rescale[f / 2];

    // O += P V: P's A fragments for keys 16 kk.. are S's fragments of n tiles 2 kk and 2 kk + 1.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t a[4] = {pack_floats<scalar_t>(s[2 * kk][0], s[2 * kk][1]),
                             pack_floats<scalar_t>(s[2 * kk][2], s[2 * kk][3]),
                             pack_floats<scalar_t>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_floats<scalar_t>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n) {
        const uint16_t* vb = v_tile + (16 * kk + 2 * t) * kStride + 8 * n + g;
        const uint32_t b[2] = {pack_pair(vb[0], vb[kStride]), pack_pair(vb[8 * kStride], vb[9 * kStride])};
        cuda::mma_m16n8k16<scalar_t>(o[n], a, b, o[n]);
      }
    }
  }

  float inv_l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv_l[r] = 1.f / l[r];
    if (t == 0 && rows[r] < dims.Lq) lse[bh * dims.Lq + rows[r]] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
  }
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int64_t i = rows[f / 2], d = 8 * n + 2 * t + (f % 2);
      if (i < dims.Lq && d < D) out[(bh * dims.Lq + i) * D + d] = static_cast<scalar_t>(o[n][f] * inv_l[f / 2]);
    }
  }
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

// Calls fn(std::integral_constant<int, kD>) with kD the head dim rounded up to 32, 64, 128 or 256.
template <typename Fn>
void with_tensor_core_head_dim(int64_t D, const Fn& fn) {
  if (D <= 32) {
    fn(std::integral_constant<int, 32>{});
  } else {
    with_head_dim(D, fn);
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
    if constexpr (cuda::kTensorCoreType<scalar_t>) {
      if (cuda::tensor_cores_enabled()) {
        with_tensor_core_head_dim(g.head_dim, [&](auto head_dim) {
          constexpr int kD = decltype(head_dim)::value;
          constexpr auto kernel = tensor_core_forward_kernel<scalar_t, kD>;
          constexpr size_t shared = tensor_core_forward_shared_bytes<kD>();
          if (shared > kSharedBytes) cuda::allow_dynamic_shared<kernel>(shared);
          cuda::launch<kernel>(row_tile_launch(g, g.q_len, shared, kTcThreads), qc.const_data_ptr<scalar_t>(),
                               kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
                               out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(),
                               kernel_dims<float>(g, g.q_len));
        });
        return;
      }
    }
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
