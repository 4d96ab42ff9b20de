// Attention on CUDA, in two kernel variants. Saved for backward: out and lse (float32 for
// half/bfloat16, as the accumulators). Backward is FlashAttention-2's recomputation: with
// delta_i = rowsum(dO_i * O_i) (delta kernel), P = exp(q k^T * scale + bias - lse), Z the dropout
// factor (1 / (1 - p) kept, 0 dropped, 1 without dropout), dS = P (dP Z - delta), dq = dS k * scale,
// dk = dS^T q * scale, dv = (P Z)^T dO, dbias = dS; no atomics, deterministic.
//
// SDPA's options (ScoreOptions): the bias is read through its (B, H, Lq, Lk) strides, dropout
// regenerates the CPU's Philox mask element by element (philox.h), so both devices drop the same
// weights; with grouped heads a query head reads key/value head h / group in place, and the dK/dV
// kernels run one block per (batch, key/value head) that sums over its group's query heads. A row
// whose every score is -inf gives 0 and passes no gradient, as on the CPU. v's head dimension Dv
// may differ from q's and k's (D); the kernels size their arrays for the larger.
//
//   tensor_cores  float16 / bfloat16 on sm_80+ and under the emulator (cuda::tensor_cores_enabled(),
//                 CNNEXT_CUDA_TENSOR_CORES=0 turns it off): FlashAttention-2's split on mma.sync,
//                 four warps of 16 rows per block; forward, dQ and dK/dV kernels (the section
//                 "tensor_cores variant" below says how).
//   per_row       float32 / float64, and 16-bit types where tensor cores are off: one block per
//                 (batch*head, tile of kRows query rows), one thread per row; key/value tiles staged
//                 in shared memory, online softmax per thread (running max m, sum l, accumulator
//                 rescaled when m grows); dq per query row, dk/dv per key row with query tiles
//                 staged. The row's vectors live in per-thread arrays of kD (the head dim rounded up
//                 to 64, 128 or 256) indexed at run time, so in local memory: correct, not fast.
//
// Why one file of ~910 lines, and kernels of up to ~90 lines: both variants share the score
// options, the dimensions and the launch logic that chooses between them; the tensor-core kernels
// keep S, P and the output accumulators in register arrays across the whole key loop, indexed
// only by compile-time constants, and read best as one body from staging to the final store.
#include <tuple>

#include "attention/attention.h"
#include "common.h"
#include "cuda_device.h"
#include "cuda_tensor_cores.h"
#include "philox.h"

namespace cnnext {
namespace {

constexpr int kRows = 64;                    // query (or key) rows per block, one per thread
constexpr int64_t kSharedBytes = 48 * 1024;  // default shared-memory budget per block

// The problem as the kernels see it. Blocks are numbered (batch*head, row tile) flattened into
// grid.x, which allows 2^31 - 1 blocks (grid.y would stop at 65,535 batch*heads).
template <typename acc_t>
struct Dims {
  int64_t Lq, Lk, D, Dv;  // D: q's and k's head dim; Dv: v's
  acc_t scale;            // in the accumulation type: a float-rounded 1/sqrt(D) is off by ~3e-8 in float64
  bool causal;
  int64_t row_tiles;  // blocks per (batch, head)
  __device__ bool visible(int64_t i, int64_t j) const { return !causal || j <= i; }
  __device__ int64_t head() const { return blockIdx.x / row_tiles; }      // batch * heads + head (or kv head)
  __device__ int64_t row_tile() const { return blockIdx.x % row_tiles; }  // tile of kRows rows
};

template <typename acc_t>
Dims<acc_t> kernel_dims(const AttentionGeometry& g, int64_t rows) {
  return {
      g.q_len, g.k_len, g.head_dim, g.v_dim, static_cast<acc_t>(g.scale), g.causal, ceil_div(rows, kRows)};
}

// One block of `threads` per (batch * head, tile of kRows rows of length `rows`), over `heads` heads
// (query heads, or key/value heads for the dK/dV kernels).
cuda::LaunchConfig row_tile_launch(const AttentionGeometry& g, int64_t heads, int64_t rows,
                                   size_t shared_bytes, int threads = kRows) {
  const int64_t blocks = g.batch * heads * ceil_div(rows, kRows);
  TORCH_CHECK(blocks <= 2147483647, "attention (CUDA): batch * heads * ceil(length / ", kRows, ") = ", blocks,
              " blocks, more than a grid holds (2^31 - 1)");
  return {dim3(static_cast<unsigned>(blocks)), dim3(threads), shared_bytes};
}

// Rows of a staged tile that fit the shared-memory budget, for a (tile, D) and a (tile, Dv) array of acc_t.
template <typename acc_t>
int tile_rows(int64_t D, int64_t Dv) {
  return static_cast<int>(std::clamp<int64_t>(kSharedBytes / ((D + Dv) * int64_t(sizeof(acc_t))), 1, 32));
}

// ScoreOptions (below) narrowed to one query head: its bias and dbias planes and the index of its
// first weight in the dropout mask, so that the per-weight calls do no division.
template <typename scalar_t>
struct HeadOptions {
  using acc_t = cuda::acc_t<scalar_t>;
  const scalar_t* bias;        // the head's (Lq, Lk) plane, or nullptr
  int64_t bias_row, bias_col;  // its strides
  scalar_t* dbias;             // the head's contiguous (Lq, Lk) plane of dbias, or nullptr
  int64_t Lk;
  uint64_t first_weight;  // mask index of weight (0, 0): bh Lq Lk
  uint64_t seed, offset;
  uint32_t threshold;
  acc_t keep_scale;
  bool dropout;

  __device__ acc_t bias_at(int64_t i, int64_t j) const {
    return bias == nullptr ? acc_t(0) : static_cast<acc_t>(bias[i * bias_row + j * bias_col]);
  }
  // Z of weight (i, j): keep_scale when kept, 0 when dropped, 1 without dropout.
  __device__ acc_t keep(int64_t i, int64_t j) const {
    if (!dropout) return acc_t(1);
    const uint64_t index = first_weight + static_cast<uint64_t>(i * Lk + j);
    return dropout_keeps(seed, offset, index, threshold) ? keep_scale : acc_t(0);
  }
  __device__ void store_dbias(int64_t i, int64_t j, acc_t ds) const {
    if (dbias != nullptr) dbias[i * Lk + j] = static_cast<scalar_t>(ds);
  }
};

// What scaled_dot_product_attention's options add to a kernel (see the top of the file). Head
// numbers fit in 32 bits (a grid has fewer than 2^31 blocks), so their divisions are 32-bit.
template <typename scalar_t>
struct ScoreOptions {
  using acc_t = cuda::acc_t<scalar_t>;
  const scalar_t* bias;                               // (B, H, Lq, Lk) through its strides, or nullptr
  int64_t bias_batch, bias_head, bias_row, bias_col;  // its strides (0 where broadcast)
  scalar_t* dbias;                                    // (B, H, Lq, Lk) contiguous, or nullptr: not asked
  int heads, group;                                   // query heads; query heads per key/value head
  uint64_t seed, offset;                              // the dropout mask's Philox key and counter offset
  uint32_t threshold;                                 // dropout_threshold(p)
  acc_t keep_scale;                                   // 1 / (1 - p), 0 for p = 1
  bool dropout;

  // The key/value head (batch * kv_heads + kv head) that query head bh = batch * heads + head reads.
  __device__ int64_t kv_head(int64_t bh) const {
    const int head = static_cast<int>(bh);
    return head / heads * (heads / group) + head % heads / group;
  }
  // Query head r (< group) of key/value head bhk.
  __device__ int64_t query_head(int64_t bhk, int r) const {
    const int kv_heads = heads / group, head = static_cast<int>(bhk);
    return int64_t{head / kv_heads} * heads + head % kv_heads * group + r;
  }
  __device__ HeadOptions<scalar_t> head(int64_t bh, int64_t Lq, int64_t Lk) const {
    const int b = static_cast<int>(bh) / heads, h = static_cast<int>(bh) % heads;
    return {bias == nullptr ? nullptr : bias + b * bias_batch + h * bias_head,
            bias_row,
            bias_col,
            dbias == nullptr ? nullptr : dbias + bh * Lq * Lk,
            Lk,
            static_cast<uint64_t>(bh * Lq * Lk),
            seed,
            offset,
            threshold,
            keep_scale,
            dropout};
  }
};

// The options a kernel instantiation reads: all of them (kOptions), or none, as compile-time
// constants the compiler folds away. The tensor-core kernels are built both ways, so that the
// plain case does not pay for the options in registers and occupancy (figures: NOTES.md, "SDPA's
// options in the CUDA attention kernels").
template <bool kOptions, typename scalar_t>
__device__ __forceinline__ ScoreOptions<scalar_t> options_read(ScoreOptions<scalar_t> opt) {
  if constexpr (!kOptions) {
    opt.bias = nullptr;
    opt.dbias = nullptr;
    opt.dropout = false;
  }
  return opt;
}

template <typename scalar_t>
ScoreOptions<scalar_t> score_options(const AttentionGeometry& g, const AttentionOptions& options,
                                     const at::Tensor& dbias) {
  ScoreOptions<scalar_t> o{};
  if (options.bias.defined()) {
    const at::Tensor& b = options.bias;
    o.bias = b.const_data_ptr<scalar_t>();
    o.bias_batch = b.stride(0), o.bias_head = b.stride(1), o.bias_row = b.stride(2), o.bias_col = b.stride(3);
  }
  o.dbias = dbias.defined() && dbias.numel() > 0 ? dbias.mutable_data_ptr<scalar_t>() : nullptr;
  o.heads = static_cast<int>(g.heads);
  o.group = static_cast<int>(g.group());
  o.dropout = options.dropout();
  o.seed = static_cast<uint64_t>(options.seed);
  o.offset = static_cast<uint64_t>(options.offset);
  o.threshold = dropout_threshold(options.dropout_p);
  o.keep_scale =
      static_cast<cuda::acc_t<scalar_t>>(options.dropout_p < 1.0 ? 1.0 / (1.0 - options.dropout_p) : 0.0);
  return o;
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
                               cuda::acc_t<scalar_t>* lse, Dims<cuda::acc_t<scalar_t>> dims,
                               ScoreOptions<scalar_t> opt, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* k_tile = cuda::dynamic_shared_memory<acc_t>();  // (tile, D)
  acc_t* v_tile = k_tile + tile * dims.D;                // (tile, Dv)
  const int64_t bh = dims.head(), tile0 = dims.row_tile() * kRows, i = tile0 + threadIdx.x, D = dims.D,
                Dv = dims.Dv;
  const bool active = i < dims.Lq;
  const int64_t kvh = opt.kv_head(bh);
  const auto head = opt.head(bh, dims.Lq, dims.Lk);
  const scalar_t* kb = k + kvh * dims.Lk * D;
  const scalar_t* vb = v + kvh * dims.Lk * Dv;
  acc_t q_row[kD], acc[kD];
  for (int d = 0; d < D; ++d)
    q_row[d] = active ? static_cast<acc_t>(q[(bh * dims.Lq + i) * D + d]) : acc_t(0);
  for (int d = 0; d < Dv; ++d) acc[d] = 0;
  acc_t m = -INFINITY, l = 0;
  const int64_t last_row = min(dims.Lq, tile0 + kRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += tile) {
    __syncthreads();
    stage(k_tile, kb, j0, tile, dims.Lk, D);
    stage(v_tile, vb, j0, tile, dims.Lk, Dv);
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < tile && j0 + jj < dims.Lk; ++jj) {
      const int64_t j = j0 + jj;
      if (!dims.visible(i, j)) break;
      acc_t s = 0;
      for (int d = 0; d < D; ++d) s += q_row[d] * k_tile[jj * D + d];
      s = s * dims.scale + head.bias_at(i, j);
      if (s == -INFINITY) continue;  // masked out: weight 0 (and a row's max stays -inf until it sees a key)
      const acc_t m_new = max(m, s), rescale = exp(m - m_new), p = exp(s - m_new);
      l = l * rescale + p;  // the softmax sums the weights before dropout
      const acc_t pz = p * head.keep(i, j);
      for (int d = 0; d < Dv; ++d) acc[d] = acc[d] * rescale + pz * v_tile[jj * Dv + d];
      m = m_new;
    }
  }
  if (!active) return;
  const acc_t inv_l = l > 0 ? acc_t(1) / l : acc_t(0);  // 0 for a row that saw no key
  for (int d = 0; d < Dv; ++d) out[(bh * dims.Lq + i) * Dv + d] = static_cast<scalar_t>(acc[d] * inv_l);
  lse[bh * dims.Lq + i] = l > 0 ? m + log(l) : acc_t(-INFINITY);
}

// ---- tensor_cores variant (float16 / bfloat16 on sm_80+, and the emulator) ---------------------
//
// FlashAttention-2's split. Every kernel below runs kTcWarps warps per block, each warp owning 16
// rows of the block's 64 (query rows in the forward and dQ kernels, key rows in the dK/dV kernel);
// the other side's rows are staged tile by tile into shared memory as 16-bit patterns, zero-padded
// past the sequence and past the head dim up to kD (32, 64, 128 or 256), rows kD + 8 apart (so the
// lanes of a fragment load hit distinct banks). Products go through mma_m16n8k16 with float
// accumulators (cuda_tensor_cores.h): a lane holds rows g and g + 8 of its warp's 16 (g = lane / 4)
// and columns 2t, 2t + 1 of every 8-wide tile (t = lane % 4). An accumulator tile pair is laid out
// exactly as the A fragment of the next product needs it, so P and dS go from one mma to the next
// in registers, rounded to scalar_t (as FlashAttention does). Register arrays have compile-time
// sizes and constant indices: no local memory.
//
//   forward   per key tile: S = Q K^T, online softmax in base 2 (scores times scale * log2 e,
//             exp2; the quad's four lanes share a row and combine max and sum by xor-shuffles),
//             O = O * rescale + P V. Saves lse = (m + log2 l) * ln 2.
//   dQ        per key tile: S = Q K^T, P = exp2(S' - lse'), dP = dO V^T, dS = P (dP - delta),
//             dQ += dS K; dQ *= scale.
//   dK, dV    per query tile, from the key rows' side: S^T = K Q^T, P^T, dV += P^T dO,
//             dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; dK *= scale. For kD = 256 the
//             two accumulators would not fit in registers together: one launch computes dV, a
//             second dK (recomputing S^T).
constexpr int kTcWarps = 4, kTcRows = 16 * kTcWarps, kTcThreads = 32 * kTcWarps;
static_assert(kTcRows == kRows, "Dims numbers row tiles of kRows rows");
template <int kD>
inline constexpr int kTcTileRows = kD <= 64 ? 64 : 32;  // rows of the staged (other side's) tiles
template <int kD>
inline constexpr int kTcRowStride = kD + 8;  // 16-bit elements

// Rows [r0, r0 + rows) of a (L, D) matrix into a (rows, kD) shared tile of 16-bit patterns, zero
// past L and past D.
template <int kD, typename scalar_t>
__device__ __forceinline__ void stage_bits(uint16_t* tile, const scalar_t* src, int64_t r0, int rows,
                                           int64_t L, int64_t D) {
  for (int e = threadIdx.x; e < rows * kD; e += kTcThreads) {
    const int r = e / kD, d = e % kD;  // kD is a power of two: a shift and a mask
    tile[r * kTcRowStride<kD> + d] = (r0 + r < L && d < D) ? src[(r0 + r) * D + d].x : uint16_t{0};
  }
}

// Fragments from a row-major shared tile T (row stride kTcRowStride<kD>); lane (g, t) as above.
// A = T[row0.., 16 kk..] (16 x 16): the warp's own rows against 16 columns.
template <int kD>
__device__ __forceinline__ void a_fragment(uint32_t (&a)[4], const uint16_t* tile, int row0, int kk, int g,
                                           int t) {
  constexpr int kStride = kTcRowStride<kD>;
  const uint16_t* p = tile + (row0 + g) * kStride + 16 * kk + 2 * t;
  a[0] = cuda::pack_pair(p[0], p[1]);
  a[1] = cuda::pack_pair(p[8 * kStride], p[8 * kStride + 1]);
  a[2] = cuda::pack_pair(p[8], p[9]);
  a[3] = cuda::pack_pair(p[8 * kStride + 8], p[8 * kStride + 9]);
}
// B = T^T (16 x 8): B[k][n] = T[n0 + n][16 kk + k], the tile's rows as B's columns (Q K^T's K).
template <int kD>
__device__ __forceinline__ void b_fragment_transposed(uint32_t (&b)[2], const uint16_t* tile, int n0, int kk,
                                                      int g, int t) {
  const uint16_t* p = tile + (n0 + g) * kTcRowStride<kD> + 16 * kk + 2 * t;
  b[0] = cuda::pack_pair(p[0], p[1]);
  b[1] = cuda::pack_pair(p[8], p[9]);
}
// B = T (16 x 8): B[k][n] = T[16 kk + k][n0 + n], the tile's rows as B's depth (P V's V).
template <int kD>
__device__ __forceinline__ void b_fragment(uint32_t (&b)[2], const uint16_t* tile, int kk, int n0, int g,
                                           int t) {
  constexpr int kStride = kTcRowStride<kD>;
  const uint16_t* p = tile + (16 * kk + 2 * t) * kStride + n0 + g;
  b[0] = cuda::pack_pair(p[0], p[kStride]);
  b[1] = cuda::pack_pair(p[8 * kStride], p[9 * kStride]);
}
// The A fragment (16 x 16, columns 16 kk..) of a 16 x N float accumulator held as 8-wide tiles.
template <typename scalar_t, int kTiles>
__device__ __forceinline__ void a_fragment_from(uint32_t (&a)[4], const float (&acc)[kTiles][4], int kk) {
  const auto pack = [](float low, float high) {
    return cuda::pack_pair(static_cast<scalar_t>(low), static_cast<scalar_t>(high));
  };
  a[0] = pack(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = pack(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

template <int kTiles>
__device__ __forceinline__ void zero(float (&acc)[kTiles][4]) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n)
#pragma unroll
    for (int f = 0; f < 4; ++f) acc[n][f] = 0.f;
}

// acc (16 x 8 kTiles) += A_tile[row0.., :kD] @ B, B's columns the rows [0, 8 kTiles) of b_tile:
// the warp's rows against every row of a staged tile (S = Q K^T, dP = dO V^T and their transposes).
template <typename scalar_t, int kD, int kTiles>
__device__ __forceinline__ void rows_times_rows(float (&acc)[kTiles][4], const uint16_t* a_tile, int row0,
                                                const uint16_t* b_tile, int g, int t) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t a[4];
    a_fragment<kD>(a, a_tile, row0, kk, g, t);
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      uint32_t b[2];
      b_fragment_transposed<kD>(b, b_tile, 8 * n, kk, g, t);
      cuda::mma_m16n8k16<scalar_t>(acc[n], a, b, acc[n]);
    }
  }
}

// acc (16 x kD) += X @ tile[:16 kSteps, :kD] with X (16 x 16 kSteps) held as float accumulators
// (O += P V, dV += P^T dO, dQ += dS K, dK += dS^T Q).
template <typename scalar_t, int kD, int kTiles>
__device__ __forceinline__ void accumulators_times_tile(float (&acc)[kD / 8][4], const float (&x)[kTiles][4],
                                                        const uint16_t* tile, int g, int t) {
#pragma unroll
  for (int kk = 0; kk < kTiles / 2; ++kk) {
    uint32_t a[4];
    a_fragment_from<scalar_t>(a, x, kk);
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      uint32_t b[2];
      b_fragment<kD>(b, tile, kk, 8 * n, g, t);
      cuda::mma_m16n8k16<scalar_t>(acc[n], a, b, acc[n]);
    }
  }
}

// Rows [row0, row0 + 16) of a (L, D) output from a 16 x kD accumulator times `factor` per row.
template <typename scalar_t, int kD>
__device__ __forceinline__ void store_rows(scalar_t* dst, const float (&acc)[kD / 8][4], int64_t row0,
                                           int64_t L, int64_t D, const float (&factor)[2], int g, int t) {
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int64_t row = row0 + g + 8 * (f / 2), d = 8 * n + 2 * t + (f % 2);
      if (row < L && d < D) dst[row * D + d] = static_cast<scalar_t>(acc[n][f] * factor[f / 2]);
    }
  }
}

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

template <int kD>
constexpr size_t tensor_core_forward_shared_bytes() {
  return size_t{kTcRows + 2 * kTcTileRows<kD>} * kTcRowStride<kD> * sizeof(uint16_t);
}

template <typename scalar_t, int kD, bool kOptions>
__global__ void __launch_bounds__(kTcThreads)
    tensor_core_forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out,
                               float* lse, Dims<float> dims, ScoreOptions<scalar_t> options) {
  const auto opt = options_read<kOptions>(options);
  constexpr int kKeys = kTcTileRows<kD>, kStride = kTcRowStride<kD>, kKeyTiles = kKeys / 8;
  uint16_t* q_tile = cuda::dynamic_shared_memory<uint16_t>();  // (kTcRows, kD)
  uint16_t* k_tile = q_tile + kTcRows * kStride;               // (kKeys, kD)
  uint16_t* v_tile = k_tile + kKeys * kStride;                 // (kKeys, kD)
  const int64_t bh = dims.head(), q0 = dims.row_tile() * kTcRows, D = dims.D, Dv = dims.Dv;
  const int64_t kvh = opt.kv_head(bh);
  const auto head = opt.head(bh, dims.Lq, dims.Lk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, wm = 16 * warp;
  const int64_t rows[2] = {q0 + wm + g, q0 + wm + g + 8};  // this lane's two query rows
  const float scale_log2 = dims.scale * kLog2e;

  stage_bits<kD>(q_tile, q + bh * dims.Lq * D, q0, kTcRows, dims.Lq, D);
  float o[kD / 8][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's share of the row sums

  const int64_t last_row = min(dims.Lq, q0 + kTcRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += kKeys) {
    __syncthreads();  // the previous tile's readers are done
    stage_bits<kD>(k_tile, k + kvh * dims.Lk * D, j0, kKeys, dims.Lk, D);
    stage_bits<kD>(v_tile, v + kvh * dims.Lk * Dv, j0, kKeys, dims.Lk, Dv);
    __syncthreads();

    float s[kKeyTiles][4];
    zero(s);
    rows_times_rows<scalar_t, kD>(s, q_tile, wm, k_tile, g, t);

    // Online softmax over the tile, in base 2; masked scores (past Lk, causal, bias -inf) are -inf.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int64_t j = j0 + 8 * n + 2 * t + (f % 2), i = rows[f / 2];
        const bool in_range = j < dims.Lk && i < dims.Lq && dims.visible(i, j);
        s[n][f] = in_range ? s[n][f] * scale_log2 + head.bias_at(i, j) * kLog2e : -INFINITY;
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
        l[f / 2] += s[n][f];                     // the softmax sums the weights before dropout
      }
    }
    if (opt.dropout) {
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
        for (int f = 0; f < 4; ++f) {
          const int64_t j = j0 + 8 * n + 2 * t + (f % 2), i = rows[f / 2];
          if (j < dims.Lk && i < dims.Lq) s[n][f] *= head.keep(i, j);  // P Z
        }
    }
#pragma unroll
    for (int n = 0; n < kD / 8; ++n)
#pragma unroll
      for (int f = 0; f < 4; ++f) o[n][f] *= rescale[f / 2];
    accumulators_times_tile<scalar_t, kD>(o, s, v_tile, g, t);
  }

  float inv_l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv_l[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;  // 0 for a row that saw no key
    if (t == 0 && rows[r] < dims.Lq)
      lse[bh * dims.Lq + rows[r]] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
  }
  store_rows<scalar_t, kD>(out + bh * dims.Lq * Dv, o, q0 + wm, dims.Lq, Dv, inv_l, g, t);
}

template <int kD>
constexpr size_t tensor_core_dq_shared_bytes() {
  return size_t{2 * kTcRows + 2 * kTcTileRows<kD>} * kTcRowStride<kD> * sizeof(uint16_t);
}

// dQ for 64 query rows of one (batch, head); lse and delta of this lane's rows from global memory.
template <typename scalar_t, int kD, bool kOptions>
__global__ void __launch_bounds__(kTcThreads)
    tensor_core_dq_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                          const float* lse, const float* delta, scalar_t* dq, Dims<float> dims,
                          ScoreOptions<scalar_t> options) {
  const auto opt = options_read<kOptions>(options);
  constexpr int kKeys = kTcTileRows<kD>, kStride = kTcRowStride<kD>, kKeyTiles = kKeys / 8;
  uint16_t* q_tile = cuda::dynamic_shared_memory<uint16_t>();  // (kTcRows, kD)
  uint16_t* do_tile = q_tile + kTcRows * kStride;              // (kTcRows, kD)
  uint16_t* k_tile = do_tile + kTcRows * kStride;              // (kKeys, kD)
  uint16_t* v_tile = k_tile + kKeys * kStride;                 // (kKeys, kD)
  const int64_t bh = dims.head(), q0 = dims.row_tile() * kTcRows, D = dims.D, Dv = dims.Dv;
  const int64_t kvh = opt.kv_head(bh);
  const auto head = opt.head(bh, dims.Lq, dims.Lk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, wm = 16 * warp;
  const int64_t rows[2] = {q0 + wm + g, q0 + wm + g + 8};
  const float scale_log2 = dims.scale * kLog2e;
  float row_lse2[2], row_delta[2];
  bool takes_part[2];  // an existing row that saw a key (a fully masked row has lse -inf, no gradient)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool active = rows[r] < dims.Lq;
    row_lse2[r] = active ? lse[bh * dims.Lq + rows[r]] * kLog2e : 0.f;
    row_delta[r] = active ? delta[bh * dims.Lq + rows[r]] : 0.f;
    takes_part[r] = active && row_lse2[r] != -INFINITY;
  }
  stage_bits<kD>(q_tile, q + bh * dims.Lq * D, q0, kTcRows, dims.Lq, D);
  stage_bits<kD>(do_tile, dout + bh * dims.Lq * Dv, q0, kTcRows, dims.Lq, Dv);
  float dq_acc[kD / 8][4];
  zero(dq_acc);

  const int64_t last_row = min(dims.Lq, q0 + kTcRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += kKeys) {
    __syncthreads();
    stage_bits<kD>(k_tile, k + kvh * dims.Lk * D, j0, kKeys, dims.Lk, D);
    stage_bits<kD>(v_tile, v + kvh * dims.Lk * Dv, j0, kKeys, dims.Lk, Dv);
    __syncthreads();
    float s[kKeyTiles][4], dp[kKeyTiles][4];
    zero(s);
    zero(dp);
    rows_times_rows<scalar_t, kD>(s, q_tile, wm, k_tile, g, t);
    rows_times_rows<scalar_t, kD>(dp, do_tile, wm, v_tile, g, t);
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int64_t j = j0 + 8 * n + 2 * t + (f % 2), i = rows[f / 2];
        const bool in_range = j < dims.Lk && takes_part[f / 2] && dims.visible(i, j);
        float ds = 0.f;
        if (in_range) {
          const float p = exp2f(s[n][f] * scale_log2 + head.bias_at(i, j) * kLog2e - row_lse2[f / 2]);
          ds = p * (dp[n][f] * head.keep(i, j) - row_delta[f / 2]);
          head.store_dbias(i, j, ds);
        }
        s[n][f] = ds;  // now dS
      }
    }
    accumulators_times_tile<scalar_t, kD>(dq_acc, s, k_tile, g, t);
  }
  const float scale[2] = {dims.scale, dims.scale};
  store_rows<scalar_t, kD>(dq + bh * dims.Lq * D, dq_acc, q0 + wm, dims.Lq, D, scale, g, t);
}

template <int kD>
constexpr size_t tensor_core_dkdv_shared_bytes() {
  return size_t{2 * kTcRows + 2 * kTcTileRows<kD>} * kTcRowStride<kD> * sizeof(uint16_t) +
         2 * kTcTileRows<kD> * sizeof(float);
}

// dK and/or dV for 64 key rows of one (batch, key/value head), summed over the query heads of its
// group; query tiles staged with their lse and delta.
template <typename scalar_t, int kD, bool kDK, bool kDV, bool kOptions>
__global__ void __launch_bounds__(kTcThreads)
    tensor_core_dkdv_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                            const float* lse, const float* delta, scalar_t* dk, scalar_t* dv,
                            Dims<float> dims, ScoreOptions<scalar_t> options) {
  const auto opt = options_read<kOptions>(options);
  constexpr int kQueries = kTcTileRows<kD>, kStride = kTcRowStride<kD>, kQueryTiles = kQueries / 8;
  uint16_t* k_tile = cuda::dynamic_shared_memory<uint16_t>();                 // (kTcRows, kD)
  uint16_t* v_tile = k_tile + kTcRows * kStride;                              // (kTcRows, kD)
  uint16_t* q_tile = v_tile + kTcRows * kStride;                              // (kQueries, kD)
  uint16_t* do_tile = q_tile + kQueries * kStride;                            // (kQueries, kD)
  float* lse2_tile = reinterpret_cast<float*>(do_tile + kQueries * kStride);  // (kQueries)
  float* delta_tile = lse2_tile + kQueries;                                   // (kQueries)
  const int64_t bhk = dims.head(), j0 = dims.row_tile() * kTcRows, D = dims.D, Dv = dims.Dv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, wk = 16 * warp;
  const int64_t keys[2] = {j0 + wk + g, j0 + wk + g + 8};  // this lane's two key rows
  const float scale_log2 = dims.scale * kLog2e;
  stage_bits<kD>(k_tile, k + bhk * dims.Lk * D, j0, kTcRows, dims.Lk, D);
  stage_bits<kD>(v_tile, v + bhk * dims.Lk * Dv, j0, kTcRows, dims.Lk, Dv);
  float dk_acc[kDK ? kD / 8 : 1][4], dv_acc[kDV ? kD / 8 : 1][4];
  zero(dk_acc);
  zero(dv_acc);

  // Causal: queries before this block's first key see none of its keys.
  const int64_t i_begin = dims.causal ? (min(j0, dims.Lq) / kQueries) * kQueries : 0;
  for (int r = 0; r < opt.group; ++r) {
    const int64_t bh = opt.query_head(bhk, r);
    const auto head = opt.head(bh, dims.Lq, dims.Lk);
    for (int64_t i0 = i_begin; i0 < dims.Lq; i0 += kQueries) {
      __syncthreads();
      stage_bits<kD>(q_tile, q + bh * dims.Lq * D, i0, kQueries, dims.Lq, D);
      stage_bits<kD>(do_tile, dout + bh * dims.Lq * Dv, i0, kQueries, dims.Lq, Dv);
      for (int c = threadIdx.x; c < kQueries; c += kTcThreads) {
        const bool active = i0 + c < dims.Lq;
        lse2_tile[c] = active ? lse[bh * dims.Lq + i0 + c] * kLog2e : -INFINITY;
        delta_tile[c] = active ? delta[bh * dims.Lq + i0 + c] : 0.f;
      }
      __syncthreads();
      float s[kQueryTiles][4];  // S^T, then P^T, then dS^T
      zero(s);
      rows_times_rows<scalar_t, kD>(s, k_tile, wk, q_tile, g, t);
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
        for (int f = 0; f < 4; ++f) {
          const int c = 8 * n + 2 * t + (f % 2);
          const int64_t i = i0 + c, j = keys[f / 2];
          // lse -inf: past Lq, or a fully masked row (no weights, no gradient).
          const bool in_range = j < dims.Lk && lse2_tile[c] != -INFINITY && dims.visible(i, j);
          s[n][f] = in_range ? exp2f(s[n][f] * scale_log2 + head.bias_at(i, j) * kLog2e - lse2_tile[c]) : 0.f;
        }
      }
      if constexpr (kDV) {
        if (opt.dropout) {
          float pz[kQueryTiles][4];  // (P Z)^T
#pragma unroll
          for (int n = 0; n < kQueryTiles; ++n)
#pragma unroll
            for (int f = 0; f < 4; ++f) {
              const int64_t i = i0 + 8 * n + 2 * t + (f % 2), j = keys[f / 2];
              pz[n][f] = s[n][f] == 0.f ? 0.f : s[n][f] * head.keep(i, j);
            }
          accumulators_times_tile<scalar_t, kD>(dv_acc, pz, do_tile, g, t);
        } else {
          accumulators_times_tile<scalar_t, kD>(dv_acc, s, do_tile, g, t);
        }
      }
      if constexpr (kDK) {
        float dp[kQueryTiles][4];  // dP^T = V dO^T
        zero(dp);
        rows_times_rows<scalar_t, kD>(dp, v_tile, wk, do_tile, g, t);
#pragma unroll
        for (int n = 0; n < kQueryTiles; ++n)
#pragma unroll
          for (int f = 0; f < 4; ++f) {
            const int c = 8 * n + 2 * t + (f % 2);
            const float z = (head.dropout && s[n][f] != 0.f) ? head.keep(i0 + c, keys[f / 2]) : 1.f;
            s[n][f] *= dp[n][f] * z - delta_tile[c];
          }
        accumulators_times_tile<scalar_t, kD>(dk_acc, s, q_tile, g, t);
      }
    }
  }
  if constexpr (kDV) {
    const float one[2] = {1.f, 1.f};
    store_rows<scalar_t, kD>(dv + bhk * dims.Lk * Dv, dv_acc, j0 + wk, dims.Lk, Dv, one, g, t);
  }
  if constexpr (kDK) {
    const float scale[2] = {dims.scale, dims.scale};
    store_rows<scalar_t, kD>(dk + bhk * dims.Lk * D, dk_acc, j0 + wk, dims.Lk, D, scale, g, t);
  }
}

template <typename scalar_t>
__global__ void delta_kernel(const scalar_t* dout, const scalar_t* out, cuda::acc_t<scalar_t>* delta,
                             int64_t rows, int64_t Dv) {
  using acc_t = cuda::acc_t<scalar_t>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t d = 0; d < Dv; ++d)
      sum += static_cast<acc_t>(dout[r * Dv + d]) * static_cast<acc_t>(out[r * Dv + d]);
    delta[r] = sum;
  }
}

// dq (and dbias) for one query row per thread.
template <typename scalar_t, int kD>
__global__ void dq_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                          const cuda::acc_t<scalar_t>* lse, const cuda::acc_t<scalar_t>* delta, scalar_t* dq,
                          Dims<cuda::acc_t<scalar_t>> dims, ScoreOptions<scalar_t> opt, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* k_tile = cuda::dynamic_shared_memory<acc_t>();  // (tile, D)
  acc_t* v_tile = k_tile + tile * dims.D;                // (tile, Dv)
  const int64_t bh = dims.head(), tile0 = dims.row_tile() * kRows, i = tile0 + threadIdx.x, D = dims.D,
                Dv = dims.Dv;
  const bool active = i < dims.Lq;
  const int64_t row = bh * dims.Lq + i, kvh = opt.kv_head(bh);
  const auto head = opt.head(bh, dims.Lq, dims.Lk);
  acc_t q_row[kD], do_row[kD], dq_row[kD];
  for (int d = 0; d < D; ++d) {
    q_row[d] = active ? static_cast<acc_t>(q[row * D + d]) : acc_t(0);
    dq_row[d] = 0;
  }
  for (int d = 0; d < Dv; ++d) do_row[d] = active ? static_cast<acc_t>(dout[row * Dv + d]) : acc_t(0);
  const acc_t row_lse = active ? lse[row] : acc_t(0), row_delta = active ? delta[row] : acc_t(0);
  const bool sees_keys = row_lse != -INFINITY;  // a fully masked row has no weights and no gradient
  const int64_t last_row = min(dims.Lq, tile0 + kRows) - 1;
  const int64_t k_end = dims.causal ? min(dims.Lk, last_row + 1) : dims.Lk;
  for (int64_t j0 = 0; j0 < k_end; j0 += tile) {
    __syncthreads();
    stage(k_tile, k + kvh * dims.Lk * D, j0, tile, dims.Lk, D);
    stage(v_tile, v + kvh * dims.Lk * Dv, j0, tile, dims.Lk, Dv);
    __syncthreads();
    if (!active || !sees_keys) continue;
    for (int jj = 0; jj < tile && j0 + jj < dims.Lk; ++jj) {
      const int64_t j = j0 + jj;
      if (!dims.visible(i, j)) break;
      acc_t s = 0, dp = 0;
      for (int d = 0; d < D; ++d) s += q_row[d] * k_tile[jj * D + d];
      for (int d = 0; d < Dv; ++d) dp += do_row[d] * v_tile[jj * Dv + d];
      const acc_t p = exp(s * dims.scale + head.bias_at(i, j) - row_lse);
      const acc_t ds = p * (dp * head.keep(i, j) - row_delta);
      head.store_dbias(i, j, ds);
      for (int d = 0; d < D; ++d) dq_row[d] += ds * dims.scale * k_tile[jj * D + d];
    }
  }
  if (!active) return;
  for (int d = 0; d < D; ++d) dq[row * D + d] = static_cast<scalar_t>(dq_row[d]);
}

// dk and dv for one key row per thread, summed over the query heads that share its key/value head.
template <typename scalar_t, int kD>
__global__ void dkdv_kernel(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                            const cuda::acc_t<scalar_t>* lse, const cuda::acc_t<scalar_t>* delta,
                            scalar_t* dk, scalar_t* dv, Dims<cuda::acc_t<scalar_t>> dims,
                            ScoreOptions<scalar_t> opt, int tile) {
  using acc_t = cuda::acc_t<scalar_t>;
  acc_t* q_tile = cuda::dynamic_shared_memory<acc_t>();  // (tile, D)
  acc_t* do_tile = q_tile + tile * dims.D;               // (tile, Dv)
  const int64_t bhk = dims.head(), tile0 = dims.row_tile() * kRows, j = tile0 + threadIdx.x, D = dims.D,
                Dv = dims.Dv;
  const bool active = j < dims.Lk;
  const int64_t row = bhk * dims.Lk + j;
  acc_t k_row[kD], v_row[kD], dk_row[kD], dv_row[kD];
  for (int d = 0; d < D; ++d) {
    k_row[d] = active ? static_cast<acc_t>(k[row * D + d]) : acc_t(0);
    dk_row[d] = 0;
  }
  for (int d = 0; d < Dv; ++d) {
    v_row[d] = active ? static_cast<acc_t>(v[row * Dv + d]) : acc_t(0);
    dv_row[d] = 0;
  }
  // Causal: queries before this block's first key see none of its keys.
  const int64_t i_begin = dims.causal ? (min(tile0, dims.Lq) / tile) * tile : 0;
  for (int r = 0; r < opt.group; ++r) {
    const int64_t bh = opt.query_head(bhk, r);
    const auto head = opt.head(bh, dims.Lq, dims.Lk);
    for (int64_t i0 = i_begin; i0 < dims.Lq; i0 += tile) {
      __syncthreads();
      stage(q_tile, q + bh * dims.Lq * D, i0, tile, dims.Lq, D);
      stage(do_tile, dout + bh * dims.Lq * Dv, i0, tile, dims.Lq, Dv);
      __syncthreads();
      if (!active) continue;
      for (int ii = 0; ii < tile && i0 + ii < dims.Lq; ++ii) {
        const int64_t i = i0 + ii;
        const acc_t row_lse = lse[bh * dims.Lq + i];
        if (!dims.visible(i, j) || row_lse == -INFINITY) continue;
        acc_t s = 0, dp = 0;
        for (int d = 0; d < D; ++d) s += q_tile[ii * D + d] * k_row[d];
        for (int d = 0; d < Dv; ++d) dp += do_tile[ii * Dv + d] * v_row[d];
        const acc_t p = exp(s * dims.scale + head.bias_at(i, j) - row_lse);
        const acc_t z = head.keep(i, j);
        const acc_t ds = p * (dp * z - delta[bh * dims.Lq + i]) * dims.scale;
        for (int d = 0; d < Dv; ++d) dv_row[d] += p * z * do_tile[ii * Dv + d];
        for (int d = 0; d < D; ++d) dk_row[d] += ds * q_tile[ii * D + d];
      }
    }
  }
  if (!active) return;
  for (int d = 0; d < D; ++d) dk[row * D + d] = static_cast<scalar_t>(dk_row[d]);
  for (int d = 0; d < Dv; ++d) dv[row * Dv + d] = static_cast<scalar_t>(dv_row[d]);
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

// Calls fn(std::bool_constant<reads>) with reads true when there is a bias or dropout to apply
// (options_read).
template <typename Fn>
void with_options(const AttentionOptions& options, const Fn& fn) {
  if (options.bias.defined() || options.dropout()) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// Launches a tensor-core kernel over row tiles of `rows` of `heads` heads (queries of the query
// heads for forward and dQ, keys of the key/value heads for dK/dV) with `shared` bytes of dynamic
// shared memory (opted in past the default 48 KiB), passing the inputs (a tuple: q, k, v for
// forward; dO, q, k, v, lse, delta for backward), then the outputs, then the dims and options.
template <auto kernel, typename scalar_t, typename... Outputs>
void launch_tensor_core(const AttentionGeometry& g, int64_t heads, int64_t rows, size_t shared,
                        const auto& inputs, const ScoreOptions<scalar_t>& opt, Outputs... outputs) {
  if (shared > kSharedBytes) cuda::allow_dynamic_shared<kernel>(shared);
  std::apply(
      [&](auto... in) {
        cuda::launch<kernel>(row_tile_launch(g, heads, rows, shared, kTcThreads), in..., outputs...,
                             kernel_dims<float>(g, rows), opt);
      },
      inputs);
}

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, cuda::kDeviceType); }

at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

AttentionOutputs attention_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::optional<double> scale, bool causal,
                                        const std::optional<at::Tensor>& bias, double dropout_p,
                                        const std::optional<at::Tensor>& dropout_rng, bool gqa) {
  const auto options = attention_options(bias, dropout_p, dropout_rng, gqa);
  const auto g = attention_geometry(q, k, v, scale, causal, options);
  check_cuda(q, "attention: q");
  const cuda::DeviceGuard guard(q.device());
  auto out = cuda::empty({g.batch, g.heads, g.q_len, g.v_dim}, q.options());
  auto lse = cuda::empty({g.batch, g.heads, g.q_len}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const int64_t width = std::max(g.head_dim, g.v_dim);  // the kernels' arrays cover both head dims
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_forward_cuda", [&] {
    using acc_t = cuda::acc_t<scalar_t>;
    const auto opt = score_options<scalar_t>(g, options, at::Tensor());
    if constexpr (cuda::kTensorCoreType<scalar_t>) {
      if (cuda::tensor_cores_enabled()) {
        with_tensor_core_head_dim(width, [&](auto head_dim) {
          with_options(options, [&](auto reads_options) {
            constexpr int kD = decltype(head_dim)::value;
            launch_tensor_core<tensor_core_forward_kernel<scalar_t, kD, decltype(reads_options)::value>>(
                g, g.heads, g.q_len, tensor_core_forward_shared_bytes<kD>(),
                std::make_tuple(qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
                                vc.const_data_ptr<scalar_t>()),
                opt, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>());
          });
        });
        return;
      }
    }
    const int tile = tile_rows<acc_t>(g.head_dim, g.v_dim);
    const auto config = row_tile_launch(g, g.heads, g.q_len, tile * (g.head_dim + g.v_dim) * sizeof(acc_t));
    with_head_dim(width, [&](auto head_dim) {
      cuda::launch<forward_kernel<scalar_t, decltype(head_dim)::value>>(
          config, qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), kernel_dims<acc_t>(g, g.q_len),
          opt, tile);
    });
  });
  return {out, lse};
}

AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                       std::optional<double> scale, bool causal,
                                       const std::optional<at::Tensor>& bias, double dropout_p,
                                       const std::optional<at::Tensor>& dropout_rng, bool gqa,
                                       bool bias_grad) {
  const auto options = attention_options(bias, dropout_p, dropout_rng, gqa);
  const auto g = attention_backward_geometry(grad_out, q, k, v, out, lse, scale, causal, options);
  check_cuda(q, "_attention_backward: q");
  const cuda::DeviceGuard guard(q.device());
  auto dq = cuda::empty({g.batch, g.heads, g.q_len, g.head_dim}, q.options());
  auto dk = cuda::empty({g.batch, g.kv_heads, g.k_len, g.head_dim}, q.options());
  auto dv = cuda::empty({g.batch, g.kv_heads, g.k_len, g.v_dim}, q.options());
  // Zero: the dQ kernels write dbias only where a weight exists (visible, in a row that saw a key).
  auto dbias = bias_grad ? cuda::empty({g.batch, g.heads, g.q_len, g.k_len}, q.options()).zero_()
                         : cuda::empty({0}, q.options());
  if (q.numel() == 0 || k.numel() == 0) return AttentionGrads{dq.zero_(), dk.zero_(), dv.zero_(), dbias};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto doc = grad_out.contiguous(), oc = out.contiguous(), lc = lse.contiguous();
  const int64_t BH = g.batch * g.heads, width = std::max(g.head_dim, g.v_dim);
  CNNEXT_DISPATCH_CUDA_TYPES(q.scalar_type(), "attention_backward_cuda", [&] {
    using acc_t = cuda::acc_t<scalar_t>;
    const auto opt = score_options<scalar_t>(g, options, dbias);
    auto delta = cuda::empty({BH * g.q_len}, lc.options());
    const int64_t rows = BH * g.q_len;
    cuda::launch<delta_kernel<scalar_t>>(
        {static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 256), 65535)), 256},
        doc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(), delta.mutable_data_ptr<acc_t>(), rows,
        g.v_dim);
    if constexpr (cuda::kTensorCoreType<scalar_t>) {
      if (cuda::tensor_cores_enabled()) {
        with_tensor_core_head_dim(width, [&](auto head_dim) {
          with_options(options, [&](auto reads_options) {
            constexpr int kD = decltype(head_dim)::value;
            constexpr bool kOptions = decltype(reads_options)::value;
            const auto pointers = std::make_tuple(
                doc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
                vc.const_data_ptr<scalar_t>(), lc.const_data_ptr<float>(), delta.const_data_ptr<float>());
            launch_tensor_core<tensor_core_dq_kernel<scalar_t, kD, kOptions>>(
                g, g.heads, g.q_len, tensor_core_dq_shared_bytes<kD>(), pointers, opt,
                dq.mutable_data_ptr<scalar_t>());
            constexpr size_t dkdv_shared = tensor_core_dkdv_shared_bytes<kD>();
            auto* dk_ptr = dk.mutable_data_ptr<scalar_t>();
            auto* dv_ptr = dv.mutable_data_ptr<scalar_t>();
            if constexpr (kD <= 128) {
              launch_tensor_core<tensor_core_dkdv_kernel<scalar_t, kD, true, true, kOptions>>(
                  g, g.kv_heads, g.k_len, dkdv_shared, pointers, opt, dk_ptr, dv_ptr);
            } else {  // two passes: dK and dV accumulators do not fit in registers together
              launch_tensor_core<tensor_core_dkdv_kernel<scalar_t, kD, false, true, kOptions>>(
                  g, g.kv_heads, g.k_len, dkdv_shared, pointers, opt, dk_ptr, dv_ptr);
              launch_tensor_core<tensor_core_dkdv_kernel<scalar_t, kD, true, false, kOptions>>(
                  g, g.kv_heads, g.k_len, dkdv_shared, pointers, opt, dk_ptr, dv_ptr);
            }
          });
        });
        return;
      }
    }
    const int tile = tile_rows<acc_t>(g.head_dim, g.v_dim);
    const size_t shared = tile * (g.head_dim + g.v_dim) * sizeof(acc_t);
    with_head_dim(width, [&](auto head_dim) {
      constexpr int kD = decltype(head_dim)::value;
      cuda::launch<dq_kernel<scalar_t, kD>>(
          row_tile_launch(g, g.heads, g.q_len, shared), doc.const_data_ptr<scalar_t>(),
          qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
          lc.const_data_ptr<acc_t>(), delta.const_data_ptr<acc_t>(), dq.mutable_data_ptr<scalar_t>(),
          kernel_dims<acc_t>(g, g.q_len), opt, tile);
      cuda::launch<dkdv_kernel<scalar_t, kD>>(
          row_tile_launch(g, g.kv_heads, g.k_len, shared), doc.const_data_ptr<scalar_t>(),
          qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
          lc.const_data_ptr<acc_t>(), delta.const_data_ptr<acc_t>(), dk.mutable_data_ptr<scalar_t>(),
          dv.mutable_data_ptr<scalar_t>(), kernel_dims<acc_t>(g, g.k_len), opt, tile);
    });
  });
  return AttentionGrads{dq, dk, dv, dbias};
}

}  // namespace cnnext
