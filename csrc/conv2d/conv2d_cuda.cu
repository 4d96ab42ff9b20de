// conv2d on CUDA: our own tiled implicit-GEMM kernels (no cuDNN, no cuBLAS).
//
// Why one file of ~950 lines: the three problems (ForwardProblem, GradInputProblem,
// GradWeightProblem), the three variants and the block tiles are all parameters of one kernel
// template, implicit_gemm_kernel, and the launch code picks among its instantiations; splitting
// them into several .cu files would instantiate the shared templates once per file (nvcc, two
// cores). In order: geometry and tiles, problems, register/shared staging, the kernel, launches.
//
// One kernel template, `implicit_gemm_kernel<Problem, Variant, Tile>`, computes C[g] = A[g] @ B[g]
// for every group g with 256 threads per block tile of C (Tile: 64x64, or 128x64 for GEMMs that
// fill the GPU with it; BlockTile), and 16-deep stages in a two-stage pipeline (pipelined_stages:
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
// Block variants (Variant):
//   FmaVariant         float64, float32 without TF32, and 16-bit types where tensor cores are off:
//                      each thread accumulates a micro tile (rows ty + 16 i, columns tx + 16 j, so
//                      a warp's stores are coalesced along columns); shared tiles in acc_t.
//   TensorCoreVariant  float16 / bfloat16 on sm_80+ (cuda::tensor_cores_enabled()), and float32 as
//                      TF32 when torch.backends.cudnn.allow_tf32 is on (cuda::tf32_enabled(),
//                      native's switch): the block tile kept in shared memory as 16-bit patterns or
//                      TF32-rounded float bits; the 8 warps tile it 4 x 2 and multiply with
//                      mma_m16n8k16 (or mma_m16n8k8_tf32) per 16x8 tile and stage
//                      (cuda_tensor_cores.h), accumulating in float.
//
// Index arithmetic: every division of the loads and stores (pixel -> (n, oh, ow), depth ->
// (c, ki, kj), grid z -> (split, group)) is a FastDivmod multiply-high (cuda_fast_divmod.h) on
// 32-bit indices; the kernel's SASS has no integer-division sequence (tests/test_tensor_cores.py).
#include <cstdlib>
#include <numeric>
#include <string_view>

#include "common.h"
#include "conv2d/conv2d.h"
#include "cuda_async_copy.h"
#include "cuda_device.h"
#include "cuda_fast_divmod.h"
#include "cuda_tensor_cores.h"

namespace cnnext {
namespace {

constexpr int kTileK = 16, kThreads = 256;
constexpr int kMaxGridZ = 65535;

// Block tiles of C (template argument Tile of implicit_gemm_kernel), both 256 threads and 16-deep
// stages. The fma variant's thread owns a kRowsPerThread x kColsPerThread micro tile; the
// tensor-core variant's warps tile the block 4 x 2, each a kWarpRows x kWarpCols warp tile of
// kMmaRows x kMmaCols 16x8 mma tiles. kMinBlocksPerSM: resident 256-thread blocks per SM the
// kernel is compiled for (__launch_bounds__), which caps its registers (65536 / (256 blocks)).
//   SmallTile  64x64:   4x4 per thread, 16x32 per warp; 4 blocks (<= 64 registers) for float
//                       accumulators, 2 for double (twice the registers per accumulator).
//   LargeTile  128x64:  8x4 per thread, 32x32 per warp; 2 blocks (<= 128 registers, no spills);
//                       a third more arithmetic per loaded element, for GEMMs large enough to fill
//                       the GPU with it (use_large_tile). Not for double (its 32 accumulators take
//                       64 registers). 128x128 with 8x8 per thread spilled 56-176 bytes under the
//                       same 128-register bound (benchmarks/NOTES.md).
template <int M, int N, int kFloatAccMinBlocks, bool kKeepsColumns>
struct BlockTile {
  static constexpr int kM = M, kN = N;
  static constexpr bool kKeepColumns = kKeepsColumns;  // BlockColumns
  static constexpr int kLoadsA = kM * kTileK / kThreads, kLoadsB = kN * kTileK / kThreads;
  static constexpr int kRowsPerThread = kM / 16, kColsPerThread = kN / 16;
  static constexpr int kWarpRows = kM / 4, kWarpCols = kN / 2;
  static constexpr int kMmaRows = kWarpRows / 16, kMmaCols = kWarpCols / 8;
  static constexpr int kFloatAccumulatorMinBlocks = kFloatAccMinBlocks;
};
using SmallTile = BlockTile<64, 64, 4, false>;
using LargeTile = BlockTile<128, 64, 2, true>;
template <typename Tile, typename acc_t>
inline constexpr int kMinBlocksPerSM = std::is_same_v<acc_t, double> ? 2 : Tile::kFloatAccumulatorMinBlocks;

// The two block variants (template argument Variant of implicit_gemm_kernel; see the header).
struct FmaVariant {};
struct TensorCoreVariant {};
struct CpAsyncVariant {};

// The geometry as the kernels see it (plain data, derived sizes precomputed), with the divisors of
// its index arithmetic as FastDivmod (cuda_fast_divmod.h): the loads below split a pixel index into
// (n, oh, ow) and a depth index into (c, ki, kj) with multiply-high, never a division. Matrix
// indices are int: launch_implicit_gemm checks that every one fits.
struct KernelGeometry {
  int64_t N, C, H, W, Cout, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, groups, Cg, Coutg, K, L;
  cuda::FastDivmod by_out_pixels, by_out_w, by_taps, by_kw, by_groups, by_group_channels;
};

KernelGeometry kernel_geometry(const Conv2dGeometry& g) {
  KernelGeometry p{g.batch,        g.in_channels, g.in_h,     g.in_w,     g.out_channels,   g.out_h,
                   g.out_w,        g.kernel_h,    g.kernel_w, g.stride_h, g.stride_w,       g.pad_h,
                   g.pad_w,        g.dil_h,       g.dil_w,    g.groups,   g.in_per_group(), g.out_per_group(),
                   g.patch_size(), g.out_pixels()};
  using cuda::FastDivmod;
  p.by_out_pixels = FastDivmod::of_size(p.L);
  p.by_out_w = FastDivmod::of_size(p.Wo);
  p.by_taps = FastDivmod::of_size(p.kh * p.kw);
  p.by_kw = FastDivmod::of_size(p.kw);
  p.by_groups = FastDivmod::of_size(p.groups);
  p.by_group_channels = FastDivmod::of_size(p.Cg);
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
__device__ __forceinline__ acc_t grad_output_value(const scalar_t* dy, const Strides4& ys,
                                                   const KernelGeometry& p, int64_t g, int64_t co, int pix) {
  return static_cast<acc_t>(dy[(g * p.Coutg + co) * ys.c + out_pixel_offset(ys, p, pix)]);
}

// Each problem says which operand index varies fastest in memory (kAKFast: A's k, else A's m;
// kBKFast: B's k, else B's n) so the tile loaders give consecutive threads consecutive addresses.

template <typename scalar_t>
struct ForwardProblem {
  using scalar_type = scalar_t;
  using acc_t = cuda::acc_t<scalar_t>;
  static constexpr bool kAKFast = true, kBKFast = false;
  const scalar_t* x;     // (N, C, H, W), any strides
  const scalar_t* w;     // (Cout, C/G, kh, kw), contiguous
  const scalar_t* bias;  // (Cout) or null
  scalar_t* out;         // (N, Cout, Ho, Wo), any strides
  Strides4 xs, os;
  KernelGeometry p;

  __device__ int rows() const { return static_cast<int>(p.Coutg); }
  __device__ int cols() const { return static_cast<int>(p.N * p.L); }
  __device__ int depth() const { return static_cast<int>(p.K); }
  __device__ acc_t a(int64_t g, int m, int k) const {
    return static_cast<acc_t>(w[(g * p.Coutg + m) * p.K + k]);
  }
  // B's column pix = (n, oh, ow), decoded once per block: n and the window's top-left corner
  // (ih, iw) before the tap's dilation. (Three 32-bit registers: a 64-bit offset instead of n
  // cost the 64-register small tile 8 bytes of spills on sm_80.)
  struct Column {
    int n, ih, iw;
  };
  __device__ Column column(int64_t /*g*/, int pix) const {
    const auto [n, l] = p.by_out_pixels.divmod(pix);
    const auto [oh, ow] = p.by_out_w.divmod(l);
    return {n, static_cast<int>(oh * p.sh - p.ph), static_cast<int>(ow * p.sw - p.pw)};
  }
  // The offset of channel c of group g at column col's sample.
  __device__ int64_t channel_offset(int64_t g, const Column& col, int c) const {
    return col.n * xs.n + (g * p.Cg + c) * xs.c;
  }
  // B[k][pix]: the input under tap k = (c, ki, kj) of the window at pix; zero in the padding.
  __device__ acc_t b(int64_t g, const Column& col, int k) const {
    const auto [c, tap] = p.by_taps.divmod(k);
    const auto [ki, kj] = p.by_kw.divmod(tap);
    const int64_t ih = col.ih + ki * p.dh, iw = col.iw + kj * p.dw;
    if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return acc_t(0);
    return static_cast<acc_t>(x[channel_offset(g, col, c) + ih * xs.h + iw * xs.w]);
  }
  __device__ void store(int64_t g, int64_t /*split*/, int m, int pix, acc_t v) const {
    const int64_t co = g * p.Coutg + m;
    if (bias != nullptr) v += static_cast<acc_t>(bias[co]);
    out[co * os.c + out_pixel_offset(os, p, pix)] = static_cast<scalar_t>(v);
  }
};

// The forward on channels_last input whose channel runs are whole 16-byte chunks (launched by the
// CpAsyncVariant; cp_async_forward_applies): the depth in tap-major order, k = (ki kw + kj) Cg + c,
// so that kVec consecutive k are kVec consecutive channels of one input pixel, one 16-byte copy.
// A is the weight permuted to (Cout, kh, kw, C/G) (w_taps, contiguous along k too); B's columns,
// the store and the bias are the forward's.
template <typename scalar_t>
struct TapMajorForwardProblem : ForwardProblem<scalar_t> {
  static constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));
  using Column = typename ForwardProblem<scalar_t>::Column;

  // A[m][k .. k + kVec) of group g.
  __device__ const scalar_t* a_chunk(int64_t g, int m, int k) const {
    return this->w + (g * this->p.Coutg + m) * this->p.K + k;
  }
  // B[k .. k + kVec)[column]: channels c .. c + kVec of the input under tap (ki, kj) of the
  // column's window; null in the padding (the copy writes zeros).
  __device__ const scalar_t* b_chunk(int64_t g, const Column& col, int k) const {
    const KernelGeometry& p = this->p;
    const auto [tap, c] = p.by_group_channels.divmod(k);
    const auto [ki, kj] = p.by_kw.divmod(tap);
    const int64_t ih = col.ih + ki * p.dh, iw = col.iw + kj * p.dw;
    if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return nullptr;
    return this->x + this->channel_offset(g, col, c) + ih * this->xs.h + iw * this->xs.w;
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
  int ih0, iw0, rows, cols;             // pixels (ih0 + sh u, iw0 + sw v), u < rows, v < cols
  int ki0, kj0, step_h, step_w;         // taps (ki0 + step_h t, kj0 + step_w s)
  int taps_h, taps_w;                   //   t < taps_h, s < taps_w
  int oh0, ow0, doh, dow;               // oh = oh0 + u - doh t, ow = ow0 + v - dow s
  cuda::FastDivmod by_taps, by_taps_w;  // taps_h * taps_w, taps_w
  cuda::FastDivmod by_pixels, by_cols;  // rows * cols, cols
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
  const AxisPhase h = axis_phase(rh, p.H, p.kh, p.sh, p.ph, p.dh),
                  w = axis_phase(rw, p.W, p.kw, p.sw, p.pw, p.dw);
  using cuda::FastDivmod;
  return {.ih0 = h.first_pixel,
          .iw0 = w.first_pixel,
          .rows = h.pixels,
          .cols = w.pixels,
          .ki0 = h.first_tap,
          .kj0 = w.first_tap,
          .step_h = h.tap_step,
          .step_w = w.tap_step,
          .taps_h = h.taps,
          .taps_w = w.taps,
          .oh0 = h.first_out,
          .ow0 = w.first_out,
          .doh = h.out_step,
          .dow = w.out_step,
          .by_taps = FastDivmod::of_size(int64_t{h.taps} * w.taps),
          .by_taps_w = FastDivmod::of_size(w.taps),
          .by_pixels = FastDivmod::of_size(int64_t{h.pixels} * w.pixels),
          .by_cols = FastDivmod::of_size(w.pixels)};
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
  // B's column (n, u, v), decoded once per block: n and the output pixel (oh0 + u, ow0 + v) that
  // tap (t, s) = (0, 0) reads.
  struct Column {
    int n, oh, ow;
  };
  __device__ Column column(int64_t /*g*/, int col) const {
    int n, u, v;
    pixel(col, n, u, v);
    return {n, phase.oh0 + u, phase.ow0 + v};
  }
  // B[(co, t, s)][(n, u, v)] = dY[n, co, oh, ow] with oh = oh0 + u - doh t (alike for ow), zero
  // outside the output (borders).
  __device__ acc_t b(int64_t g, const Column& col, int k) const {
    int co, t, s;
    tap(k, co, t, s);
    const int oh = col.oh - phase.doh * t, ow = col.ow - phase.dow * s;
    if (oh < 0 || ow < 0 || oh >= p.Ho || ow >= p.Wo) return acc_t(0);
    return static_cast<acc_t>(dy[col.n * ys.n + (g * p.Coutg + co) * ys.c + oh * ys.h + ow * ys.w]);
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
  __device__ acc_t a(int64_t g, int co, int pix) const {
    return grad_output_value<acc_t>(dy, ys, p, g, co, pix);
  }
  // B's column is a patch element k, different for each of a thread's loads (the depth, pix, is
  // B's fast index here): nothing to decode ahead.
  struct Column {
    int k;
  };
  __device__ Column column(int64_t /*g*/, int k) const { return {k}; }
  __device__ acc_t b(int64_t g, const Column& col, int pix) const {
    return patch_value<acc_t>(x, xs, p, g, col.k, pix);
  }
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
inline constexpr bool kHasTensorCoreVariant =
    cuda::kTensorCoreType<scalar_t> || std::is_same_v<scalar_t, float>;
template <typename scalar_t>
using tensor_core_tile_t = std::conditional_t<std::is_same_v<scalar_t, float>, uint32_t, uint16_t>;

// The two-stage pipeline both block variants run: the global loads of the next 16-deep stage are
// issued into registers (fetch) before the block multiplies the current one out of shared memory,
// and stored to the other of two shared buffers (store) at the top of the next iteration. So the
// gathers' memory latency overlaps the arithmetic, and one __syncthreads per stage suffices: a
// thread writing buffer b at stage s has passed stage s - 1's barrier, which every thread reached
// only after multiplying out of b at stage s - 2. (cp.async would need 4-byte-aligned runs; the
// implicit GEMM's operands are gathered element by element, 16-bit ones too.)
template <typename Tile, typename tile_t>
struct StageRegisters {
  tile_t a[Tile::kLoadsA], b[Tile::kLoadsB];
};

// Which element of the stage load i of this thread covers: (row or column within the tile, depth
// within the stage), consecutive threads on the operand's fastest-varying index in memory. With
// the depth slow (kKFast false) a thread's row or column is the same for every i and every stage
// (kThreads is a multiple of the tile's width), which is what lets B's columns be decoded once.
template <bool kKFast, int kWidth>
__device__ __forceinline__ void stage_slot(int i, int& index, int& kk) {
  static_assert(kThreads % kWidth == 0, "a thread's slots must share their row or column");
  const int e = threadIdx.x + i * kThreads;
  index = kKFast ? e / kTileK : e % kWidth;
  kk = kKFast ? e % kTileK : e / kWidth;
}

// B's columns as this thread's loads see them (Problem::Column: what a problem decodes from a
// column index). When the depth is B's slow index, every load of the thread, in every stage, is in
// the same column: the large tile decodes it once per block and keeps it (Tile::kKeepColumns).
// Otherwise each load decodes its column: with the depth fast each load has its own (keeping
// kLoadsB of them would cost more registers than the decode saves), and the 64-register small
// tile has no room for a kept column (8 bytes of spills on sm_80 in the fma forward).
template <typename Problem, typename Tile>
struct BlockColumns {
  using Column = typename Problem::Column;
  static constexpr bool kKept = !Problem::kBKFast && Tile::kKeepColumns;
  Column kept;

  __device__ __forceinline__ BlockColumns(const Problem& prob, int64_t group, int n0) {
    if constexpr (kKept) {
      int nn, kk;
      stage_slot<false, Tile::kN>(0, nn, kk);
      kept = prob.column(group, n0 + nn);
    }
  }
  // The column of this thread's load slot i, which is column n of B.
  __device__ __forceinline__ Column of_slot(const Problem& prob, int64_t group, int n) const {
    if constexpr (kKept) {
      return kept;
    } else {
      return prob.column(group, n);
    }
  }
};

// Stage [k0, k0 + kTileK) of A (kM x kTileK) and B (kTileK x kN) into registers as tile_t, zero
// outside the matrices and past the split's depth.
template <typename Problem, typename Tile, typename tile_t>
__device__ __forceinline__ void fetch_stage(const Problem& prob, const BlockColumns<Problem, Tile>& columns,
                                            StageRegisters<Tile, tile_t>& r, int64_t group, int m0, int n0,
                                            int k0, int k_end) {
  using acc_t = typename Problem::acc_t;
  using scalar_t = typename Problem::scalar_type;
  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int i = 0; i < Tile::kLoadsA; ++i) {
    int mm, kk;
    stage_slot<Problem::kAKFast, Tile::kM>(i, mm, kk);
    const int m = m0 + mm, k = k0 + kk;
    r.a[i] = to_tile<tile_t, scalar_t>((m < rows && k < k_end) ? prob.a(group, m, k) : acc_t(0));
  }
#pragma unroll
  for (int i = 0; i < Tile::kLoadsB; ++i) {
    int nn, kk;
    stage_slot<Problem::kBKFast, Tile::kN>(i, nn, kk);
    const int n = n0 + nn, k = k0 + kk;
    r.b[i] = to_tile<tile_t, scalar_t>(
        (n < cols && k < k_end) ? prob.b(group, columns.of_slot(prob, group, n), k) : acc_t(0));
  }
}

// Shared tiles: [depth][row or column], rows padded by 8 elements (16-byte aligned rows, and a
// fragment load's lanes spread over distinct banks).
template <typename tile_t, int kWidth>
using SharedStage = tile_t[kTileK][kWidth + 8];

template <typename Problem, typename Tile, typename tile_t>
__device__ __forceinline__ void store_stage(const StageRegisters<Tile, tile_t>& r,
                                            SharedStage<tile_t, Tile::kM>& a_tile,
                                            SharedStage<tile_t, Tile::kN>& b_tile) {
#pragma unroll
  for (int i = 0; i < Tile::kLoadsA; ++i) {
    int mm, kk;
    stage_slot<Problem::kAKFast, Tile::kM>(i, mm, kk);
    a_tile[kk][mm] = r.a[i];
  }
#pragma unroll
  for (int i = 0; i < Tile::kLoadsB; ++i) {
    int nn, kk;
    stage_slot<Problem::kBKFast, Tile::kN>(i, nn, kk);
    b_tile[kk][nn] = r.b[i];
  }
}

// Runs the pipeline over [k_begin, k_end), calling multiply(a_tile, b_tile) once per stage with
// that stage's shared tiles. a_tiles, b_tiles: the two buffers of each operand.
template <typename Problem, typename Tile, typename tile_t, typename Multiply>
__device__ __forceinline__ void pipelined_stages(const Problem& prob, SharedStage<tile_t, Tile::kM>* a_tiles,
                                                 SharedStage<tile_t, Tile::kN>* b_tiles, int64_t group,
                                                 int m0, int n0, int k_begin, int k_end,
                                                 const Multiply& multiply) {
  const BlockColumns<Problem, Tile> columns(prob, group, n0);
  StageRegisters<Tile, tile_t> next;
  if (k_begin < k_end) fetch_stage(prob, columns, next, group, m0, n0, k_begin, k_end);
  int buffer = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    store_stage<Problem, Tile>(next, a_tiles[buffer], b_tiles[buffer]);
    __syncthreads();
    if (k0 + kTileK < k_end) fetch_stage(prob, columns, next, group, m0, n0, k0 + kTileK, k_end);
    multiply(a_tiles[buffer], b_tiles[buffer]);
    buffer ^= 1;
  }
}

// A warp's float accumulators in the tensor-core variants: [mma row tile][mma column tile]
// [fragment], fragments as cuda_tensor_cores.h documents for C and D.
template <typename Tile>
using WarpAccumulators = float[Tile::kMmaRows][Tile::kMmaCols][4];

// Writes a warp's accumulators, its warp tile at (row0, col0) of C, through the problem's store.
template <typename Tile, typename Problem>
__device__ __forceinline__ void store_warp_tile(const Problem& prob, const WarpAccumulators<Tile>& acc,
                                                int64_t group, int64_t split, int row0, int col0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int i = 0; i < Tile::kMmaRows; ++i) {
#pragma unroll
    for (int j = 0; j < Tile::kMmaCols; ++j) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int m = row0 + 16 * i + g + (f < 2 ? 0 : 8), n = col0 + 8 * j + 2 * t + (f % 2);
        if (m < rows && n < cols) prob.store(group, split, m, n, acc[i][j][f]);
      }
    }
  }
}

// One 16-deep stage of a tensor-core warp tile: acc += A B over the stage's depth, the fragment
// registers (cuda_tensor_cores.h) read through a_reg(row, k) and b_reg(col, k): for float the
// TF32 element at depth k, for half / bfloat16 the elements at depths k and k + 1 packed
// (pack_pair order). The variants differ only in how their shared tiles are laid out and read.
template <typename scalar_t, typename Tile, typename ARegister, typename BRegister>
__device__ __forceinline__ void multiply_stage(WarpAccumulators<Tile>& acc, int wm, int wn,
                                               const ARegister& a_reg, const BRegister& b_reg) {
  constexpr int kMR = Tile::kMmaRows, kMC = Tile::kMmaCols;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // Per mma: depths k0 + t (and + 4) for m16n8k8 TF32, pairs at 2t (and 2t + 8) for m16n8k16.
  constexpr bool kTf32 = std::is_same_v<scalar_t, float>;
  constexpr int kStep = kTf32 ? 8 : 16, kSecond = kTf32 ? 4 : 8;
#pragma unroll
  for (int k0 = 0; k0 < kTileK; k0 += kStep) {
    const int k = k0 + (kTf32 ? t : 2 * t);
    uint32_t a[kMR][4];
#pragma unroll
    for (int i = 0; i < kMR; ++i) {
      const int row = wm + 16 * i + g;
      a[i][0] = a_reg(row, k), a[i][1] = a_reg(row + 8, k);
      a[i][2] = a_reg(row, k + kSecond), a[i][3] = a_reg(row + 8, k + kSecond);
    }
#pragma unroll
    for (int j = 0; j < kMC; ++j) {
      const int col = wn + 8 * j + g;
      const uint32_t b[2] = {b_reg(col, k), b_reg(col, k + kSecond)};
#pragma unroll
      for (int i = 0; i < kMR; ++i) {
        if constexpr (kTf32) {
          cuda::mma_m16n8k8_tf32(acc[i][j], a[i], b, acc[i][j]);
        } else {
          cuda::mma_m16n8k16<scalar_t>(acc[i][j], a[i], b, acc[i][j]);
        }
      }
    }
  }
}

// The tensor_cores variant's block (see the header): the 8 warps as 4 x 2, warp w owning rows
// Tile::kWarpRows (w / 2) and columns Tile::kWarpCols (w % 2) of the block tile, as kMmaRows x
// kMmaCols 16x8 mma tiles whose float fragments stay in registers. Per 16-deep stage: one
// mma_m16n8k16 per mma tile for half / bfloat16, two mma_m16n8k8_tf32 for float.
template <typename Problem, typename Tile>
__device__ void tensor_core_block(const Problem& prob, int64_t group, int64_t split, int m0, int n0,
                                  int k_begin, int k_end) {
  using scalar_t = typename Problem::scalar_type;
  using tile_t = tensor_core_tile_t<scalar_t>;
  using cuda::pack_pair;
  // Plain integer patterns: no construction, nothing to convert before the fragments.
  __shared__ SharedStage<tile_t, Tile::kM> a_tiles[2];
  __shared__ SharedStage<tile_t, Tile::kN> b_tiles[2];
  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * Tile::kWarpRows, wn = (warp % 2) * Tile::kWarpCols;
  WarpAccumulators<Tile> acc = {};  // [mma row tile][mma column tile][fragment]

  pipelined_stages<Problem, Tile>(
      prob, a_tiles, b_tiles, group, m0, n0, k_begin, k_end, [&](auto& a_tile, auto& b_tile) {
        // Tiles are [depth][row or column], already TF32-rounded or 16-bit patterns.
        if constexpr (std::is_same_v<tile_t, uint32_t>) {
          multiply_stage<scalar_t, Tile>(
              acc, wm, wn, [&](int row, int k) { return a_tile[k][row]; },
              [&](int col, int k) { return b_tile[k][col]; });
        } else {
          multiply_stage<scalar_t, Tile>(
              acc, wm, wn, [&](int row, int k) { return pack_pair(a_tile[k][row], a_tile[k + 1][row]); },
              [&](int col, int k) { return pack_pair(b_tile[k][col], b_tile[k + 1][col]); });
        }
      });

  store_warp_tile<Tile>(prob, acc, group, split, m0 + wm, n0 + wn);
}

// The CpAsyncVariant's block (TapMajorForwardProblem only): the TensorCoreVariant's warp tiling
// and mma, with the operands copied global -> shared by cp.async (cuda_async_copy.h) in 16-byte
// chunks of kVec depth-consecutive elements, over a kAsyncStages-deep ring of shared stages: while
// the block multiplies stage s, the copies of stages s + 1 and s + 2 are in flight, and no
// register holds a loaded element on its way. Shared tiles are [row or column][depth] here (the
// copies' contiguous direction), rows padded by one chunk: 16-byte aligned, and a fragment load's
// lanes on distinct banks. Elements arrive unconverted (float bits for float: TF32-rounded at the
// fragment load).
constexpr int kAsyncStages = 3;

template <typename Problem, typename Tile>
__device__ void async_tensor_core_block(const Problem& prob, int64_t group, int64_t split, int m0, int n0,
                                        int k_begin, int k_end) {
  using scalar_t = typename Problem::scalar_type;
  using element_t = std::conditional_t<std::is_same_v<scalar_t, float>, float, uint16_t>;
  constexpr int kVec = Problem::kVec, kRowChunks = kTileK / kVec, kPitch = kTileK + kVec;
  constexpr int kChunksA = Tile::kM * kRowChunks, kChunksB = Tile::kN * kRowChunks;
  constexpr int kSlotsA = (kChunksA + kThreads - 1) / kThreads,
                kSlotsB = (kChunksB + kThreads - 1) / kThreads;
  __align__(16) __shared__ element_t a_tiles[kAsyncStages][Tile::kM][kPitch];
  __align__(16) __shared__ element_t b_tiles[kAsyncStages][Tile::kN][kPitch];
  const int rows = prob.rows(), cols = prob.cols();

  // Chunk slot s of this thread: chunk e = threadIdx.x + s kThreads of the operand, row or column
  // e / kRowChunks, depth (e % kRowChunks) kVec; the same every stage, so B's columns are decoded once.
  typename Problem::Column columns[kSlotsB];
#pragma unroll
  for (int s = 0; s < kSlotsB; ++s)
    columns[s] = prob.column(group, n0 + (threadIdx.x + s * kThreads) / kRowChunks);

  const auto issue = [&](int stage, int k0) {
#pragma unroll
    for (int s = 0; s < kSlotsA; ++s) {
      const int e = threadIdx.x + s * kThreads;
      if (kChunksA % kThreads != 0 && e >= kChunksA) break;
      const int mm = e / kRowChunks, kk = (e % kRowChunks) * kVec, m = m0 + mm, k = k0 + kk;
      const scalar_t* src = (m < rows && k < k_end) ? prob.a_chunk(group, m, k) : nullptr;
      cuda::copy_16_async(&a_tiles[stage][mm][kk], src != nullptr ? src : prob.w, src != nullptr ? 16 : 0);
    }
#pragma unroll
    for (int s = 0; s < kSlotsB; ++s) {
      const int e = threadIdx.x + s * kThreads;
      if (kChunksB % kThreads != 0 && e >= kChunksB) break;
      const int nn = e / kRowChunks, kk = (e % kRowChunks) * kVec, n = n0 + nn, k = k0 + kk;
      const scalar_t* src = (n < cols && k < k_end) ? prob.b_chunk(group, columns[s], k) : nullptr;
      cuda::copy_16_async(&b_tiles[stage][nn][kk], src != nullptr ? src : prob.w, src != nullptr ? 16 : 0);
    }
  };

  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * Tile::kWarpRows, wn = (warp % 2) * Tile::kWarpCols;
  WarpAccumulators<Tile> acc = {};

  // Stages s < kAsyncStages - 1 in flight before the loop; every iteration commits one group (empty
  // past the end), so "all but the newest kAsyncStages - 2 groups" is always the stage to multiply.
#pragma unroll
  for (int s = 0; s < kAsyncStages - 1; ++s) {
    if (k_begin + s * kTileK < k_end) issue(s, k_begin + s * kTileK);
    cuda::commit_copies();
  }
  int stage = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    cuda::wait_copies<kAsyncStages - 2>();  // this thread's copies of `stage` have landed ...
    __syncthreads();  // ... everyone's; and everyone is done with the stage the next copies overwrite
    const int ahead = k0 + (kAsyncStages - 1) * kTileK;
    if (ahead < k_end) issue((stage + kAsyncStages - 1) % kAsyncStages, ahead);
    cuda::commit_copies();
    const auto& a_tile = a_tiles[stage];
    const auto& b_tile = b_tiles[stage];
    // Tiles are [row or column][depth], elements as copied: rounded to TF32 here for float.
    if constexpr (std::is_same_v<element_t, float>) {
      multiply_stage<scalar_t, Tile>(
          acc, wm, wn, [&](int row, int k) { return cuda::to_tf32(a_tile[row][k]); },
          [&](int col, int k) { return cuda::to_tf32(b_tile[col][k]); });
    } else {
      multiply_stage<scalar_t, Tile>(
          acc, wm, wn, [&](int row, int k) { return cuda::load_pair(&a_tile[row][k]); },
          [&](int col, int k) { return cuda::load_pair(&b_tile[col][k]); });
    }
    stage = (stage + 1) % kAsyncStages;
  }
  cuda::wait_copies<0>();  // only empty groups remain; nothing may be in flight when the block exits
  store_warp_tile<Tile>(prob, acc, group, split, m0 + wm, n0 + wn);
}

// The fma variant's block: thread (ty, tx) of a 16 x 16 grid accumulates C rows ty + 16 i and
// columns tx + 16 j (so a warp's stores are coalesced along columns).
template <typename Problem, typename Tile>
__device__ void fma_block(const Problem& prob, int64_t group, int64_t split, int m0, int n0, int k_begin,
                          int k_end) {
  using acc_t = typename Problem::acc_t;
  constexpr int kI = Tile::kRowsPerThread, kJ = Tile::kColsPerThread;
  __shared__ SharedStage<acc_t, Tile::kM>
      a_tiles[2];  // padded: fewer bank conflicts when k varies per thread
  __shared__ SharedStage<acc_t, Tile::kN> b_tiles[2];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  acc_t acc[kI][kJ];
#pragma unroll
  for (int i = 0; i < kI; ++i)
#pragma unroll
    for (int j = 0; j < kJ; ++j) acc[i][j] = acc_t(0);

  pipelined_stages<Problem, Tile>(prob, a_tiles, b_tiles, group, m0, n0, k_begin, k_end,
                                  [&](auto& a_tile, auto& b_tile) {
#pragma unroll
                                    for (int kk = 0; kk < kTileK; ++kk) {
                                      acc_t a_frag[kI], b_frag[kJ];
#pragma unroll
                                      for (int i = 0; i < kI; ++i) a_frag[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
                                      for (int j = 0; j < kJ; ++j) b_frag[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
                                      for (int i = 0; i < kI; ++i)
#pragma unroll
                                        for (int j = 0; j < kJ; ++j) acc[i][j] += a_frag[i] * b_frag[j];
                                    }
                                  });

  const int rows = prob.rows(), cols = prob.cols();
#pragma unroll
  for (int i = 0; i < kI; ++i) {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < rows && n < cols) prob.store(group, split, m, n, acc[i][j]);
    }
  }
}

// C[g] = A[g] @ B[g] over depth range [split * depth_per_split, ...) for blockIdx.z = split * G + g,
// by the variant and block tile the template arguments name (the file's header).
template <typename Problem, typename Variant, typename Tile>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM<Tile, typename Problem::acc_t>)
    implicit_gemm_kernel(const Problem prob, int depth_per_split) {
  const auto [split, group] = prob.p.by_groups.divmod(blockIdx.z);
  const int m0 = blockIdx.y * Tile::kM, n0 = blockIdx.x * Tile::kN;
  const int k_begin = static_cast<int>(split) * depth_per_split;
  const int k_end = min(prob.depth(), k_begin + depth_per_split);
  if constexpr (std::is_same_v<Variant, CpAsyncVariant>) {
    async_tensor_core_block<Problem, Tile>(prob, group, split, m0, n0, k_begin, k_end);
  } else if constexpr (std::is_same_v<Variant, TensorCoreVariant>) {
    tensor_core_block<Problem, Tile>(prob, group, split, m0, n0, k_begin, k_end);
  } else {
    fma_block<Problem, Tile>(prob, group, split, m0, n0, k_begin, k_end);
  }
}

// The block tile for a GEMM of rows x cols per group and blocks_z (groups x splits) grid layers:
// the large one where its rows are mostly used (at least 96 of 128) and its blocks still fill the
// GPU twice over, else the small one; always the small one for double (LargeTile).
// CNNEXT_CONV2D_TILE=64x64 or 128x64 forces one where it exists (tests and benchmarks; read at
// every launch).
template <typename acc_t>
bool use_large_tile(int64_t rows, int64_t cols, int64_t blocks_z) {
  const char* forced = std::getenv("CNNEXT_CONV2D_TILE");
  const std::string_view name(forced == nullptr ? "" : forced);
  TORCH_CHECK(name.empty() || name == "64x64" || name == "128x64",
              "CNNEXT_CONV2D_TILE must be 64x64 or 128x64 (or unset), not '", name, "'");
  if (std::is_same_v<acc_t, double>) return false;
  if (!name.empty()) return name == "128x64";
  const int64_t large_blocks = ceil_div(rows, LargeTile::kM) * ceil_div(cols, LargeTile::kN) * blocks_z;
  return rows >= 96 && large_blocks >= 2 * int64_t{cuda::multiprocessor_count()};
}

// Whether the tensor-core variants run for scalar_t now (the header: tensor cores for 16-bit
// types, TF32 for float as native's switch says).
template <typename scalar_t>
bool tensor_core_variant_enabled() {
  return std::is_same_v<scalar_t, float> ? cuda::tf32_enabled() : cuda::tensor_cores_enabled();
}

template <typename Problem>
inline constexpr bool kIsTapMajor =
    std::is_same_v<Problem, TapMajorForwardProblem<typename Problem::scalar_type>>;

// Whether the forward takes the CpAsyncVariant (TapMajorForwardProblem): the tensor-core variant
// is on and the input is channels_last with every group's channels, and every pixel's, in whole
// aligned 16-byte chunks.
template <typename scalar_t>
bool cp_async_forward_applies(const at::Tensor& input, const KernelGeometry& p) {
  if (!tensor_core_variant_enabled<scalar_t>()) return false;
  constexpr int64_t kVec = TapMajorForwardProblem<scalar_t>::kVec;
  return input.stride(1) == 1 && p.Cg % kVec == 0 && input.stride(0) % kVec == 0 &&
         input.stride(2) % kVec == 0 && input.stride(3) % kVec == 0 &&
         reinterpret_cast<uintptr_t>(input.const_data_ptr()) % 16 == 0;
}

template <typename Problem, typename Tile>
void launch_with_tile(const Problem& prob, int64_t rows, int64_t cols, int64_t blocks_z, int stage_depth) {
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, Tile::kN)),
                  static_cast<unsigned>(ceil_div(rows, Tile::kM)), static_cast<unsigned>(blocks_z));
  using scalar_t = typename Problem::scalar_type;
  if constexpr (kIsTapMajor<Problem>) {
    cuda::launch<implicit_gemm_kernel<Problem, CpAsyncVariant, Tile>>({grid, kThreads}, prob, stage_depth);
  } else {
    if constexpr (kHasTensorCoreVariant<scalar_t>) {
      if (tensor_core_variant_enabled<scalar_t>()) {
        cuda::launch<implicit_gemm_kernel<Problem, TensorCoreVariant, Tile>>({grid, kThreads}, prob,
                                                                             stage_depth);
        return;
      }
    }
    cuda::launch<implicit_gemm_kernel<Problem, FmaVariant, Tile>>({grid, kThreads}, prob, stage_depth);
  }
}

// Launches the GEMM of `prob` with rows x cols of C per group, split `splits` ways along depth.
template <typename Problem>
void launch_implicit_gemm(const Problem& prob, int64_t rows, int64_t cols, int64_t depth, int64_t groups,
                          int64_t splits = 1) {
  const int64_t depth_per_split = ceil_div(ceil_div(depth, splits), kTileK) * kTileK;
  TORCH_CHECK(ceil_div(rows, SmallTile::kM) <= 65535, "conv2d (CUDA): too many channels per group (", rows,
              ")");
  TORCH_CHECK(groups * splits <= kMaxGridZ, "conv2d (CUDA): too many groups (", groups, ")");
  const int stage_depth = static_cast<int>(std::max<int64_t>(depth_per_split, kTileK));
  using acc_t = typename Problem::acc_t;
  if constexpr (!std::is_same_v<acc_t, double>) {
    if (use_large_tile<acc_t>(rows, cols, groups * splits)) {
      launch_with_tile<Problem, LargeTile>(prob, rows, cols, groups * splits, stage_depth);
      return;
    }
  }
  launch_with_tile<Problem, SmallTile>(prob, rows, cols, groups * splits, stage_depth);
}

// dW[i] = sum over splits of partial[s][i], in split order (deterministic).
template <typename scalar_t, typename acc_t>
__global__ void sum_splits_kernel(const acc_t* partial, scalar_t* dw, int64_t splits, int64_t size) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
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
  const int64_t tiles = ceil_div(p.Coutg, SmallTile::kM) * ceil_div(p.K, SmallTile::kN) * p.groups;
  const int64_t target_blocks = 4 * int64_t{cuda::multiprocessor_count()};
  const int64_t splits = std::clamp<int64_t>(ceil_div(target_blocks, tiles), 1, ceil_div(p.N * p.L, kTileK));
  return std::min<int64_t>(splits, kMaxGridZ / p.groups);
}

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, cuda::kDeviceType); }

// The kernels index the GEMMs' rows, columns and depth as int and split them with FastDivmod; a
// tile past the last index must still fit too.
void check_indexable(const KernelGeometry& p) {
  const int64_t largest = std::max({p.N * p.L, p.N * p.H * p.W, p.K, p.Coutg * p.kh * p.kw, p.Cg, p.Coutg});
  TORCH_CHECK(
      largest + 2 * LargeTile::kM <= cuda::kMaxDividend, "conv2d (CUDA): ", largest,
      " pixels (batch * height * width) or patch elements is more than the kernels index with 32 bits "
      "(at most 2^31 - ",
      2 * LargeTile::kM + 1, "); split the batch");
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
                         input.options().memory_format(conv2d_output_format(input, weight)));
  if (out.numel() == 0) return out;
  const auto p = kernel_geometry(geometry);
  check_indexable(p);
  const auto w = weight.contiguous();
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "conv2d_forward_cuda", [&] {
    if constexpr (kHasTensorCoreVariant<scalar_t>) {
      if (cp_async_forward_applies<scalar_t>(input, p)) {
        const auto w_taps =
            weight.permute({0, 2, 3, 1}).contiguous();  // (Cout, kh, kw, C/G): tap-major depth
        const TapMajorForwardProblem<scalar_t> prob{
            {input.const_data_ptr<scalar_t>(), w_taps.const_data_ptr<scalar_t>(),
             has_bias ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
             strides_of(input), strides_of(out), p}};
        launch_implicit_gemm(prob, p.Coutg, p.N * p.L, p.K, p.groups);
        return;
      }
    }
    const ForwardProblem<scalar_t> prob{input.const_data_ptr<scalar_t>(),
                                        w.const_data_ptr<scalar_t>(),
                                        has_bias ? b.const_data_ptr<scalar_t>() : nullptr,
                                        out.mutable_data_ptr<scalar_t>(),
                                        strides_of(input),
                                        strides_of(out),
                                        p};
    launch_implicit_gemm(prob, p.Coutg, p.N * p.L, p.K, p.groups);
  });
  return out;
}

Conv2dGrads conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const auto geometry =
      conv2d_backward_geometry(grad_output, input, weight, stride, padding, dilation, groups);
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
      dinput = cuda::empty(input.sizes(), input.options().memory_format(conv2d_output_format(input, weight)));
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
        auto partial =
            cuda::empty({splits, p.Cout, p.K}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const GradWeightProblem<scalar_t> prob{grad_output.const_data_ptr<scalar_t>(),
                                               input.const_data_ptr<scalar_t>(),
                                               partial.mutable_data_ptr<acc_t>(),
                                               strides_of(grad_output),
                                               strides_of(input),
                                               p};
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
        cuda::launch<bias_grad_kernel<scalar_t, acc_t>>(
            {static_cast<unsigned>(p.Cout), kThreads}, grad_output.const_data_ptr<scalar_t>(),
            strides_of(grad_output), p, dbias.mutable_data_ptr<scalar_t>());
      }
    }
  });
  return {dinput, in_layout_of_weight(dweight, weight), dbias};
}

}  // namespace cnnext
