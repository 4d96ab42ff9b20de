// conv2d on CUDA: our own tiled implicit-GEMM kernels (no cuDNN, no cuBLAS).
//
// One kernel template, `implicit_gemm_kernel`, computes C[g] = A[g] @ B[g] for every group g with
// 64x64 output tiles, 256 threads, and 16-deep stages in a two-stage pipeline (pipelined_stages:
// the next stage's loads into registers while the current one is multiplied from shared memory).
// The three convolution GEMMs differ only in how A and B are read and C is written ("problems"):
//
//   forward      out[g]    (Cout/G, N*Ho*Wo) = W[g] (Cout/G, K)   @ cols[g] (K, N*Ho*Wo)
//   grad input   dinput[g] (C/G,    N*H*W)   = W[g]^T             @ dY patches (Cout/G*kh*kw, N*H*W),
//                as one GEMM per stride phase over only the taps that reach its pixels (GradInputProblem)
//   grad weight  dW[g]     (Cout/G, K)       = dY[g] (Cout/G, N*Ho*Wo) @ cols[g]^T
//
// with K = C/G * kh * kw. Columns of the implicit matrices are gathered on the fly from the
// tensors through their strides, so NCHW, channels_last and strided views are read in place.
// Accumulation is in float for half/bfloat16/float and in double for double. Outputs are written
// (=), never accumulated. grad weight reduces over N*Ho*Wo, so it is split along that axis over
// blocks (split-K) into a float workspace, summed by a second kernel in a fixed order: the result
// is deterministic, with no atomics. grad bias is a per-channel block reduction, also deterministic.
//
// The CUDA runtime is reached only through cuda_device.h, so this file also compiles for the CUDA
// emulator (csrc/cuda_emulation/).
//
// Kernel variants of implicit_gemm_kernel<Problem, kTensorCores>:
//   fma           float64, float32 without TF32, and 16-bit types where tensor cores are off: each
//                 thread accumulates a 4x4 micro tile (rows ty + 16 i, columns tx + 16 j, so a
//                 warp's stores are coalesced along columns); shared tiles in acc_t.
//   tensor_cores  float16 / bfloat16 on sm_80+ (cuda::tensor_cores_enabled()), and float32 as TF32
//                 when torch.backends.cudnn.allow_tf32 is on (cuda::tf32_enabled(), native's
//                 switch): the same 64x64x16 block tiles kept in shared memory as 16-bit patterns
//                 or TF32-rounded float bits; each of the 8 warps owns 16 rows x 32 columns of C and
//                 multiplies with four mma_m16n8k16 (or eight mma_m16n8k8_tf32) per 16-deep stage
//                 (cuda_tensor_cores.h), accumulating in float.
//
// Index arithmetic: every division of the loads and stores (pixel -> (n, oh, ow), depth ->
// (c, ki, kj), grid z -> (split, group)) is a FastDivmod multiply-high (cuda_fast_divmod.h) on
// 32-bit indices; the kernel's SASS has no integer-division sequence (tests/test_tensor_cores.py).
#include <numeric>

#include "common.h"
#include "conv2d/conv2d.h"
#include "cuda_device.h"
#include "cuda_fast_divmod.h"
#include "cuda_tensor_cores.h"

namespace cnnext {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kThreads = 256;
constexpr int kMaxGridZ = 65535;
// Resident blocks per SM the implicit GEMM is compiled for (__launch_bounds__): four 256-thread
// blocks (50% occupancy, at most 64 registers per thread) where the float accumulators allow it
// without spilling, two for double (twice the registers per accumulator).
template <typename acc_t>
inline constexpr int kMinBlocksPerSM = std::is_same_v<acc_t, double> ? 2 : 4;

// The geometry as the kernels see it (plain data, derived sizes precomputed), with the divisors of
// its index arithmetic as FastDivmod (cuda_fast_divmod.h): the loads below split a pixel index into
// (n, oh, ow) and a depth index into (c, ki, kj) with multiply-high, never a division. Matrix
// indices are int: launch_implicit_gemm checks that every one fits.
struct KernelGeometry {
  int64_t N, C, H, W, Cout, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, groups, Cg, Coutg, K, L;
  cuda::FastDivmod by_out_pixels, by_out_w, by_taps, by_kw, by_groups;
};

KernelGeometry kernel_geometry(const Conv2dGeometry& g) {
  KernelGeometry p{g.batch,    g.in_channels, g.in_h,     g.in_w,    g.out_channels, g.out_h,    g.out_w,
                   g.kernel_h, g.kernel_w,    g.stride_h, g.stride_w, g.pad_h,       g.pad_w,    g.dil_h,
                   g.dil_w,    g.groups,      g.in_per_group(), g.out_per_group(), g.patch_size(), g.out_pixels()};
  using cuda::FastDivmod;
  p.by_out_pixels = FastDivmod::of_size(p.L);
  p.by_out_w = FastDivmod::of_size(p.Wo);
  p.by_taps = FastDivmod::of_size(p.kh * p.kw);
  p.by_kw = FastDivmod::of_size(p.kw);
  p.by_groups = FastDivmod::of_size(p.groups);
  return p;
}

// cols[g][k][pix]: the input value under kernel tap k = (c, ki, kj) of group g when the window
// sits at output pixel pix = (n, oh, ow); zero where the tap falls in the padding.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t patch_value(const scalar_t* x, const Strides4& xs, const KernelGeometry& p,
                                             int64_t g, int k, int pix) {
  const auto [c, tap] = p.by_taps.divmod(k);
  const auto [ki, kj] = p.by_kw.divmod(tap);
  const auto [n, l] = p.by_out_pixels.divmod(pix);
  const auto [oh, ow] = p.by_out_w.divmod(l);
  const int64_t ih = oh * p.sh - p.ph + ki * p.dh, iw = ow * p.sw - p.pw + kj * p.dw;
  if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return acc_t(0);
  return static_cast<acc_t>(x[n * xs.n + (g * p.Cg + c) * xs.c + ih * xs.h + iw * xs.w]);
}

// The offset of output pixel pix = (n, oh, ow) in a tensor of output shape with strides `s`.
__device__ __forceinline__ int64_t out_pixel_offset(const Strides4& s, const KernelGeometry& p, int pix) {
  const auto [n, l] = p.by_out_pixels.divmod(pix);
  const auto [oh, ow] = p.by_out_w.divmod(l);
  return n * s.n + oh * s.h + ow * s.w;
}

// dY[n, g*Coutg + co, oh, ow] for output pixel pix = (n, oh, ow).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t grad_output_value(const scalar_t* dy, const Strides4& ys, const KernelGeometry& p,
                                                   int64_t g, int64_t co, int pix) {
  return static_cast<acc_t>(dy[(g * p.Coutg + co) * ys.c + out_pixel_offset(ys, p, pix)]);
}

// Each problem says which operand index varies fastest in memory (kAKFast: A's k, else A's m;
// kBKFast: B's k, else B's n) so the tile loaders give consecutive threads consecutive addresses.

template <typename scalar_t>
struct ForwardProblem {
  using scalar_type = scalar_t;
  using acc_t = cuda::acc_t<scalar_t>;
  static constexpr bool kAKFast = true, kBKFast = false;
  const scalar_t* x;      // (N, C, H, W), any strides
  const scalar_t* w;      // (Cout, C/G, kh, kw), contiguous
  const scalar_t* bias;   // (Cout) or null
  scalar_t* out;          // (N, Cout, Ho, Wo), any strides
  Strides4 xs, os;
  KernelGeometry p;

  __device__ int rows() const { return static_cast<int>(p.Coutg); }
  __device__ int cols() const { return static_cast<int>(p.N * p.L); }
  __device__ int depth() const { return static_cast<int>(p.K); }
  __device__ acc_t a(int64_t g, int m, int k) const { return static_cast<acc_t>(w[(g * p.Coutg + m) * p.K + k]); }
  __device__ acc_t b(int64_t g, int k, int pix) const { return patch_value<acc_t>(x, xs, p, g, k, pix); }
  __device__ void store(int64_t g, int64_t /*split*/, int m, int pix, acc_t v) const {
    const int64_t co = g * p.Coutg + m;
    if (bias != nullptr) v += static_cast<acc_t>(bias[co]);
    out[co * os.c + out_pixel_offset(os, p, pix)] = static_cast<scalar_t>(v);
  }
};

// Grad input by stride phases. dinput pixel (ih, iw) receives dY[oh, ow] W[ki, kj] exactly where
// ih + ph - ki dh = sh oh (and alike for w): for a stride of 2, three quarters of the (tap, pixel)
// pairs of the stride-1 formulation are zero products. Pixels with the same (ih + ph) mod sh (the
// phase) are reached by the same taps: ki = ki0 + step t with ki0 dh = that phase (mod sh) and
// step = sh / gcd(sh, dh). So grad input is sh * sw GEMMs, one per phase, each over its pixels
// ih = ih0 + sh u and its taps only, with oh = oh0 + u - (dh / gcd) t: no zero products and no
// division by the stride in the loads. With stride 1 there is one phase: every pixel and tap.
struct StridePhase {
  int ih0, iw0, rows, cols;                // pixels (ih0 + sh u, iw0 + sw v), u < rows, v < cols
  int ki0, kj0, step_h, step_w;            // taps (ki0 + step_h t, kj0 + step_w s)
  int taps_h, taps_w;                      //   t < taps_h, s < taps_w
  int oh0, ow0, doh, dow;                  // oh = oh0 + u - doh t, ow = ow0 + v - dow s
  cuda::FastDivmod by_taps, by_taps_w;     // taps_h * taps_w, taps_w
  cuda::FastDivmod by_pixels, by_cols;     // rows * cols, cols
};

// The phase of residue r along one axis of length `size`, kernel `kernel`, stride, padding and
// dilation: {first pixel, pixels, first tap, tap step, taps, first output, output step per tap}.
struct AxisPhase {
  int first_pixel, pixels, first_tap, tap_step, taps, first_out, out_step;
};
AxisPhase axis_phase(int64_t r, int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  AxisPhase a{};
  a.first_pixel = static_cast<int>(((r - pad) % stride + stride) % stride);
  a.pixels = a.first_pixel < size ? static_cast<int>(ceil_div(size - a.first_pixel, stride)) : 0;
  const int64_t g = std::gcd(stride, dilation);
  a.tap_step = static_cast<int>(stride / g);
  a.first_tap = -1;
  for (int64_t k = 0; k < std::min<int64_t>(kernel, a.tap_step); ++k) {
    if ((k * dilation) % stride == r) {
      a.first_tap = static_cast<int>(k);
      break;
    }
  }
  a.taps = a.first_tap < 0 ? 0 : static_cast<int>(ceil_div(kernel - a.first_tap, a.tap_step));
  if (a.first_tap < 0) a.first_tap = 0;
  // (first_pixel + pad - first_tap * dilation) is a multiple of the stride (first_pixel + pad = r).
  a.first_out = static_cast<int>((a.first_pixel + pad - a.first_tap * dilation) / stride);
  a.out_step = static_cast<int>(dilation / g);
  return a;
}

StridePhase stride_phase(const KernelGeometry& p, int64_t rh, int64_t rw) {
  const AxisPhase h = axis_phase(rh, p.H, p.kh, p.sh, p.ph, p.dh), w = axis_phase(rw, p.W, p.kw, p.sw, p.pw, p.dw);
  using cuda::FastDivmod;
  return {.ih0 = h.first_pixel, .iw0 = w.first_pixel, .rows = h.pixels, .cols = w.pixels,
          .ki0 = h.first_tap, .kj0 = w.first_tap, .step_h = h.tap_step, .step_w = w.tap_step,
          .taps_h = h.taps, .taps_w = w.taps, .oh0 = h.first_out, .ow0 = w.first_out,
          .doh = h.out_step, .dow = w.out_step,
          .by_taps = FastDivmod::of_size(int64_t{h.taps} * w.taps), .by_taps_w = FastDivmod::of_size(w.taps),
          .by_pixels = FastDivmod::of_size(int64_t{h.pixels} * w.pixels), .by_cols = FastDivmod::of_size(w.pixels)};
}

template <typename scalar_t>
struct GradInputProblem {
  using scalar_type = scalar_t;
  using acc_t = cuda::acc_t<scalar_t>;
  static constexpr bool kAKFast = true, kBKFast = false;
  const scalar_t* dy;  // (N, Cout, Ho, Wo), any strides
  const scalar_t* w;   // (Cout, C/G, kh, kw), contiguous
  scalar_t* dx;        // (N, C, H, W), any strides
  Strides4 ys, xs;
  KernelGeometry p;
  StridePhase phase;

  __device__ int rows() const { return static_cast<int>(p.Cg); }
  __device__ int cols() const { return static_cast<int>(p.N * phase.rows * phase.cols); }
  __device__ int depth() const { return static_cast<int>(p.Coutg * phase.taps_h * phase.taps_w); }
  // Depth index k -> (co, t, s); column -> (n, u, v).
  __device__ __forceinline__ void tap(int k, int& co, int& t, int& s) const {
    const auto [c, rest] = phase.by_taps.divmod(k);
    const auto [tt, ss] = phase.by_taps_w.divmod(rest);
    co = c, t = tt, s = ss;
  }
  __device__ __forceinline__ void pixel(int col, int& n, int& u, int& v) const {
    const auto [nn, rest] = phase.by_pixels.divmod(col);
    const auto [uu, vv] = phase.by_cols.divmod(rest);
    n = nn, u = uu, v = vv;
  }
  // A[c][(co, t, s)] = W[g*Coutg + co, c, ki0 + step_h t, kj0 + step_w s]
  __device__ acc_t a(int64_t g, int c, int k) const {
    int co, t, s;
    tap(k, co, t, s);
    const int64_t ki = phase.ki0 + phase.step_h * t, kj = phase.kj0 + phase.step_w * s;
    return static_cast<acc_t>(w[(((g * p.Coutg + co) * p.Cg + c) * p.kh + ki) * p.kw + kj]);
  }
  // B[(co, t, s)][(n, u, v)] = dY[n, co, oh, ow] with oh = oh0 + u - doh t (alike for ow), zero
  // outside the output (borders).
  __device__ acc_t b(int64_t g, int k, int col) const {
    int co, t, s, n, u, v;
    tap(k, co, t, s);
    pixel(col, n, u, v);
    const int oh = phase.oh0 + u - phase.doh * t, ow = phase.ow0 + v - phase.dow * s;
    if (oh < 0 || ow < 0 || oh >= p.Ho || ow >= p.Wo) return acc_t(0);
    return static_cast<acc_t>(dy[n * ys.n + (g * p.Coutg + co) * ys.c + oh * ys.h + ow * ys.w]);
  }
  __device__ void store(int64_t g, int64_t /*split*/, int c, int col, acc_t value) const {
    int n, u, v;
    pixel(col, n, u, v);
    const int64_t ih = phase.ih0 + p.sh * u, iw = phase.iw0 + p.sw * v;
    dx[n * xs.n + (g * p.Cg + c) * xs.c + ih * xs.h + iw * xs.w] = static_cast<scalar_t>(value);
  }
};

template <typename scalar_t>
struct GradWeightProblem {
  using scalar_type = scalar_t;
  using acc_t = cuda::acc_t<scalar_t>;
  static constexpr bool kAKFast = true, kBKFast = true;
  const scalar_t* dy;  // (N, Cout, Ho, Wo), any strides
  const scalar_t* x;   // (N, C, H, W), any strides
  acc_t* partial;      // (splits, Cout, K) workspace, one slice per split
  Strides4 ys, xs;
  KernelGeometry p;

  __device__ int rows() const { return static_cast<int>(p.Coutg); }
  __device__ int cols() const { return static_cast<int>(p.K); }
  __device__ int depth() const { return static_cast<int>(p.N * p.L); }
  __device__ acc_t a(int64_t g, int co, int pix) const { return grad_output_value<acc_t>(dy, ys, p, g, co, pix); }
  __device__ acc_t b(int64_t g, int pix, int k) const { return patch_value<acc_t>(x, xs, p, g, k, pix); }
  __device__ void store(int64_t g, int64_t split, int co, int k, acc_t v) const {
    partial[(split * p.Cout + g * p.Coutg + co) * p.K + k] = v;
  }
};

// A value as a shared tile holds it: acc_t for the fma variant; for the tensor-core one the 16-bit
// pattern of half / bfloat16 (uint16_t, what the mma fragments are packed from), or the TF32
// rounding of a float (uint32_t float bits).
template <typename tile_t, typename scalar_t, typename acc_t>
__device__ __forceinline__ tile_t to_tile(acc_t value) {
  if constexpr (std::is_same_v<tile_t, uint16_t>) {
    return static_cast<scalar_t>(value).x;
  } else if constexpr (std::is_same_v<tile_t, uint32_t>) {
    return cuda::to_tf32(static_cast<float>(value));
  } else {
    return static_cast<tile_t>(value);
  }
}

// Element types with a tensor-core variant, and the shared-tile type it keeps them in.
template <typename scalar_t>
inline constexpr bool kHasTensorCoreVariant = cuda::kTensorCoreType<scalar_t> || std::is_same_v<scalar_t, float>;
template <typename scalar_t>
using tensor_core_tile_t = std::conditional_t<std::is_same_v<scalar_t, float>, uint32_t, uint16_t>;

// The two-stage pipeline both block variants run: the global loads of the next 16-deep stage are
// issued into registers (fetch) before the block multiplies the current one out of shared memory,
// and stored to the other of two shared buffers (store) at the top of the next iteration. So the
// gathers' memory latency overlaps the arithmetic, and one __syncthreads per stage suffices: a
// thread writing buffer b at stage s has passed stage s - 1's barrier, which every thread reached
// only after multiplying out of b at stage s - 2. (cp.async would need 4-byte-aligned runs; the
// implicit GEMM's operands are gathered element by element, 16-bit ones too.)
constexpr int kLoadsA = kTileM * kTileK / kThreads, kLoadsB = kTileN * kTileK / kThreads;

template <typename tile_t>
struct StageRegisters {
  tile_t a[kLoadsA], b[kLoadsB];
};

// Which element of the stage load i of this thread covers: (row or column within the tile, depth
// within the stage), consecutive threads on the operand's fastest-varying index in memory.
template <bool kKFast, int kTile>
__device__ __forceinline__ void stage_slot(int i, int& index, int& kk) {
  const int e = threadIdx.x + i * kThreads;
  index = kKFast ? e / kTileK : e % kTile;
  kk = kKFast ? e % kTileK : e / kTile;
}

// Stage [k0, k0 + kTileK) of A (kTileM x kTileK) and B (kTileK x kTileN) into registers as tile_t,
// zero outside the matrices and past the split's depth.
template <typename Problem, typename tile_t>
__device__ __forceinline__ void fetch_stage(const Problem& prob, StageRegisters<tile_t>& r, int64_t group, int m0,
                                            int n0, int k0, int k_end) {
  using acc_t = typename Problem::acc_t;
  using scalar_t = typename Problem::scalar_type;
  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int i = 0; i < kLoadsA; ++i) {
    int mm, kk;
    stage_slot<Problem::kAKFast, kTileM>(i, mm, kk);
    const int m = m0 + mm, k = k0 + kk;
    r.a[i] = to_tile<tile_t, scalar_t>((m < rows && k < k_end) ? prob.a(group, m, k) : acc_t(0));
  }
#pragma unroll
  for (int i = 0; i < kLoadsB; ++i) {
    int nn, kk;
    stage_slot<Problem::kBKFast, kTileN>(i, nn, kk);
    const int n = n0 + nn, k = k0 + kk;
    r.b[i] = to_tile<tile_t, scalar_t>((n < cols && k < k_end) ? prob.b(group, k, n) : acc_t(0));
  }
}

template <typename Problem, typename tile_t>
__device__ __forceinline__ void store_stage(const StageRegisters<tile_t>& r, tile_t (*a_tile)[kTileM + 8],
                                            tile_t (*b_tile)[kTileN + 8]) {
#pragma unroll
  for (int i = 0; i < kLoadsA; ++i) {
    int mm, kk;
    stage_slot<Problem::kAKFast, kTileM>(i, mm, kk);
    a_tile[kk][mm] = r.a[i];
  }
#pragma unroll
  for (int i = 0; i < kLoadsB; ++i) {
    int nn, kk;
    stage_slot<Problem::kBKFast, kTileN>(i, nn, kk);
    b_tile[kk][nn] = r.b[i];
  }
}

// Runs the pipeline over [k_begin, k_end), calling multiply(a_tile, b_tile) once per stage with
// that stage's shared tiles. a_tiles, b_tiles: the two buffers of each operand.
template <typename Problem, typename tile_t, typename Multiply>
__device__ __forceinline__ void pipelined_stages(const Problem& prob, tile_t (*a_tiles)[kTileK][kTileM + 8],
                                                 tile_t (*b_tiles)[kTileK][kTileN + 8], int64_t group, int m0,
                                                 int n0, int k_begin, int k_end, const Multiply& multiply) {
  StageRegisters<tile_t> next;
  if (k_begin < k_end) fetch_stage(prob, next, group, m0, n0, k_begin, k_end);
  int buffer = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    store_stage<Problem>(next, a_tiles[buffer], b_tiles[buffer]);
    __syncthreads();
    if (k0 + kTileK < k_end) fetch_stage(prob, next, group, m0, n0, k0 + kTileK, k_end);
    multiply(a_tiles[buffer], b_tiles[buffer]);
    buffer ^= 1;
  }
}

// The tensor_cores variant's block (see the header): warp w owns rows 16 (w / 2) and columns
// 32 (w % 2) of the 64x64 tile, as four 16x8 mma tiles whose float fragments stay in registers.
// Per 16-deep stage: one mma_m16n8k16 per tile for half / bfloat16, two mma_m16n8k8_tf32 for float.
template <typename Problem>
__device__ void tensor_core_block(const Problem& prob, int64_t group, int64_t split, int m0, int n0, int k_begin,
                                  int k_end) {
  using scalar_t = typename Problem::scalar_type;
  using tile_t = tensor_core_tile_t<scalar_t>;
  using cuda::pack_pair;
  // Plain integer patterns (no construction, nothing to convert before the fragments); +8 keeps
  // rows 16-byte aligned and spreads a fragment load's lanes over distinct banks.
  __shared__ tile_t a_tiles[2][kTileK][kTileM + 8];
  __shared__ tile_t b_tiles[2][kTileK][kTileN + 8];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / 2) * 16, wn = (warp % 2) * 32;
  float acc[4][4];  // [mma tile j][fragment], fragments as cuda_tensor_cores.h documents
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int f = 0; f < 4; ++f) acc[j][f] = 0.f;

  pipelined_stages(prob, a_tiles, b_tiles, group, m0, n0, k_begin, k_end, [&](auto a_tile, auto b_tile) {
    if constexpr (std::is_same_v<tile_t, uint32_t>) {
#pragma unroll
      for (int ks = 0; ks < kTileK; ks += 8) {
        const uint32_t a[4] = {a_tile[ks + t][wm + g], a_tile[ks + t][wm + g + 8], a_tile[ks + t + 4][wm + g],
                               a_tile[ks + t + 4][wm + g + 8]};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = wn + 8 * j + g;
          const uint32_t b[2] = {b_tile[ks + t][col], b_tile[ks + t + 4][col]};
          cuda::mma_m16n8k8_tf32(acc[j], a, b, acc[j]);
        }
      }
    } else {
      const uint32_t a[4] = {pack_pair(a_tile[2 * t][wm + g], a_tile[2 * t + 1][wm + g]),
                             pack_pair(a_tile[2 * t][wm + g + 8], a_tile[2 * t + 1][wm + g + 8]),
                             pack_pair(a_tile[2 * t + 8][wm + g], a_tile[2 * t + 9][wm + g]),
                             pack_pair(a_tile[2 * t + 8][wm + g + 8], a_tile[2 * t + 9][wm + g + 8])};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int col = wn + 8 * j + g;
        const uint32_t b[2] = {pack_pair(b_tile[2 * t][col], b_tile[2 * t + 1][col]),
                               pack_pair(b_tile[2 * t + 8][col], b_tile[2 * t + 9][col])};
        cuda::mma_m16n8k16<scalar_t>(acc[j], a, b, acc[j]);
      }
    }
  });

  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int m = m0 + wm + g + (f < 2 ? 0 : 8), n = n0 + wn + 8 * j + 2 * t + (f % 2);
      if (m < rows && n < cols) prob.store(group, split, m, n, acc[j][f]);
    }
  }
}

// The fma variant's block: thread (ty, tx) accumulates C rows ty + 16 i and columns tx + 16 j.
template <typename Problem>
__device__ void fma_block(const Problem& prob, int64_t group, int64_t split, int m0, int n0,
                          int k_begin, int k_end) {
  using acc_t = typename Problem::acc_t;
  __shared__ acc_t a_tiles[2][kTileK][kTileM + 8];  // padded: fewer bank conflicts when k varies per thread
  __shared__ acc_t b_tiles[2][kTileK][kTileN + 8];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  pipelined_stages(prob, a_tiles, b_tiles, group, m0, n0, k_begin, k_end, [&](auto a_tile, auto b_tile) {
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t a_frag[4], b_frag[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a_frag[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b_frag[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a_frag[i] * b_frag[j];
    }
  });

  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < rows && n < cols) prob.store(group, split, m, n, acc[i][j]);
    }
  }
}

// C[g] = A[g] @ B[g] over depth range [split * depth_per_split, ...) for blockIdx.z = split * G + g,
// by the variant kTensorCores names (the file's header).
template <typename Problem, bool kTensorCores>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM<typename Problem::acc_t>)
    implicit_gemm_kernel(const Problem prob, int depth_per_split) {
  const auto [split, group] = prob.p.by_groups.divmod(blockIdx.z);
  const int m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
  const int k_begin = static_cast<int>(split) * depth_per_split;
  const int k_end = min(prob.depth(), k_begin + depth_per_split);
  if constexpr (kTensorCores) {
    tensor_core_block(prob, group, split, m0, n0, k_begin, k_end);
  } else {
    fma_block(prob, group, split, m0, n0, k_begin, k_end);
  }
}

// Launches the GEMM of `prob` with rows x cols of C per group, split `splits` ways along depth.
template <typename Problem>
void launch_implicit_gemm(const Problem& prob, int64_t rows, int64_t cols, int64_t depth, int64_t groups,
                          int64_t splits = 1) {
  const int64_t depth_per_split = ceil_div(ceil_div(depth, splits), kTileK) * kTileK;
  TORCH_CHECK(ceil_div(rows, kTileM) <= 65535, "conv2d (CUDA): too many channels per group (", rows, ")");
  TORCH_CHECK(groups * splits <= kMaxGridZ, "conv2d (CUDA): too many groups (", groups, ")");
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kTileN)), static_cast<unsigned>(ceil_div(rows, kTileM)),
                  static_cast<unsigned>(groups * splits));
  const int stage_depth = static_cast<int>(std::max<int64_t>(depth_per_split, kTileK));
  using scalar_t = typename Problem::scalar_type;
  if constexpr (kHasTensorCoreVariant<scalar_t>) {
    if (std::is_same_v<scalar_t, float> ? cuda::tf32_enabled() : cuda::tensor_cores_enabled()) {
      cuda::launch<implicit_gemm_kernel<Problem, true>>({grid, kThreads}, prob, stage_depth);
      return;
    }
  }
  cuda::launch<implicit_gemm_kernel<Problem, false>>({grid, kThreads}, prob, stage_depth);
}

// dW[i] = sum over splits of partial[s][i], in split order (deterministic).
template <typename scalar_t, typename acc_t>
__global__ void sum_splits_kernel(const acc_t* partial, scalar_t* dw, int64_t splits, int64_t size) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t s = 0; s < splits; ++s) sum += partial[s * size + i];
    dw[i] = static_cast<scalar_t>(sum);
  }
}

// dbias[co] = sum over (n, oh, ow) of dY[n, co, oh, ow]; one block per output channel.
template <typename scalar_t, typename acc_t>
__global__ void bias_grad_kernel(const scalar_t* dy, Strides4 ys, KernelGeometry p, scalar_t* dbias) {
  __shared__ acc_t partial[kThreads];
  const int64_t co = blockIdx.x;
  acc_t sum = 0;
  for (int pix = threadIdx.x; pix < p.N * p.L; pix += kThreads) {
    sum += grad_output_value<acc_t>(dy, ys, p, /*g=*/0, co, pix);  // with g = 0, co is the channel
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) dbias[co] = static_cast<scalar_t>(partial[0]);
}

// Blocks of the split-K grad-weight GEMM: enough to fill the device a few times over, never more
// splits than 16-deep stages, never past the grid's z limit.
int64_t grad_weight_splits(const KernelGeometry& p) {
  const int64_t tiles = ceil_div(p.Coutg, kTileM) * ceil_div(p.K, kTileN) * p.groups;
  const int64_t target_blocks = 4 * int64_t{cuda::multiprocessor_count()};
  const int64_t splits = std::clamp<int64_t>(ceil_div(target_blocks, tiles), 1, ceil_div(p.N * p.L, kTileK));
  return std::min<int64_t>(splits, kMaxGridZ / p.groups);
}

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, cuda::kDeviceType); }

// The kernels index the GEMMs' rows, columns and depth as int and split them with FastDivmod; a
// tile past the last index must still fit too.
void check_indexable(const KernelGeometry& p) {
  const int64_t largest = std::max({p.N * p.L, p.N * p.H * p.W, p.K, p.Coutg * p.kh * p.kw, p.Cg, p.Coutg});
  TORCH_CHECK(largest + kTileM + kTileN <= cuda::kMaxDividend, "conv2d (CUDA): ", largest,
              " pixels (batch * height * width) or patch elements is more than the kernels index with 32 bits "
              "(at most 2^31 - ", kTileM + kTileN + 1, "); split the batch");
}

}  // namespace

at::Tensor conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto geometry = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cuda(input, "conv2d: input");
  const cuda::DeviceGuard guard(input.device());
  const bool has_bias = bias.has_value() && bias->defined();
  auto out = cuda::empty({geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w},
                       input.options().memory_format(conv2d_output_format(input)));
  if (out.numel() == 0) return out;
  const auto p = kernel_geometry(geometry);
  check_indexable(p);
  const auto w = weight.contiguous();
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "conv2d_forward_cuda", [&] {
    const ForwardProblem<scalar_t> prob{input.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                        has_bias ? b.const_data_ptr<scalar_t>() : nullptr,
                                        out.mutable_data_ptr<scalar_t>(), strides_of(input), strides_of(out), p};
    launch_implicit_gemm(prob, p.Coutg, p.N * p.L, p.K, p.groups);
  });
  return out;
}

Conv2dGrads conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const auto geometry = conv2d_backward_geometry(grad_output, input, weight, stride, padding, dilation, groups);
  check_cuda(input, "_conv2d_backward: input");
  const cuda::DeviceGuard guard(input.device());
  // Plain names, not a structured binding: the kernels' lambdas capture them (C++17 forbids that).
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const auto p = kernel_geometry(geometry);
  check_indexable(p);
  const auto w = weight.contiguous();

  at::Tensor dinput, dweight, dbias;
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "conv2d_backward_cuda", [&] {
    using acc_t = cuda::acc_t<scalar_t>;
    if (need_input) {
      dinput = cuda::empty(input.sizes(), input.options().memory_format(conv2d_output_format(input)));
      if (dinput.numel() > 0) {
        for (int64_t rh = 0; rh < p.sh; ++rh) {
          for (int64_t rw = 0; rw < p.sw; ++rw) {
            const StridePhase phase = stride_phase(p, rh, rw);
            const int64_t cols = p.N * phase.rows * phase.cols;
            if (cols == 0) continue;  // no input pixel in this phase (input smaller than the stride)
            // A phase no tap reaches has depth 0: its GEMM writes zeros, the gradient there.
            const GradInputProblem<scalar_t> prob{grad_output.const_data_ptr<scalar_t>(),
                                                  w.const_data_ptr<scalar_t>(),
                                                  dinput.mutable_data_ptr<scalar_t>(),
                                                  strides_of(grad_output),
                                                  strides_of(dinput),
                                                  p,
                                                  phase};
            launch_implicit_gemm(prob, p.Cg, cols, p.Coutg * phase.taps_h * phase.taps_w, p.groups);
          }
        }
      }
    }
    if (need_weight) {
      dweight = cuda::empty(weight.sizes(), weight.options());
      if (p.N * p.L == 0) {
        dweight.zero_();  // nothing to sum over: the gradient is exactly zero
      } else if (dweight.numel() > 0) {
        const int64_t splits = grad_weight_splits(p);
        auto partial = cuda::empty({splits, p.Cout, p.K}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const GradWeightProblem<scalar_t> prob{grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                               partial.mutable_data_ptr<acc_t>(), strides_of(grad_output),
                                               strides_of(input), p};
        launch_implicit_gemm(prob, p.Coutg, p.K, p.N * p.L, p.groups, splits);
        const int64_t size = p.Cout * p.K;
        const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(size, kThreads), 4096));
        cuda::launch<sum_splits_kernel<scalar_t, acc_t>>({blocks, kThreads}, partial.const_data_ptr<acc_t>(),
                                                         dweight.mutable_data_ptr<scalar_t>(), splits, size);
      }
    }
    if (need_bias) {
      dbias = cuda::empty({p.Cout}, weight.options());
      if (p.Cout > 0) {
        cuda::launch<bias_grad_kernel<scalar_t, acc_t>>({static_cast<unsigned>(p.Cout), kThreads},
                                                        grad_output.const_data_ptr<scalar_t>(), strides_of(grad_output),
                                                        p, dbias.mutable_data_ptr<scalar_t>());
      }
    }
  });
  return {dinput, in_layout_of_weight(dweight, weight), dbias};
}

}  // namespace cnnext
