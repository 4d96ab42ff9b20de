// Direct float32 conv2d kernels, AVX2 + FMA (see conv2d_cpu_direct.h for what and why).
//
// Why one file of ~480 lines: the forward and the weight gradient read the same padded,
// phase-split input (DirectPlan, pack_input) and the whole file is one AVX2 + FMA build
// (cpu_isa_target.h); split, the plan and packing would have to live in a header built twice.
//
// Layout of the padded input copy: per channel, `rows` rows of the zero-padded image; each row has
// its columns split by stride phase (stride_w phases of `width` floats), so input column
// ow * stride_w + kj * dil_w sits in phase (kj * dil_w) % stride_w at position ow + (kj * dil_w) /
// stride_w. A tap (c, ki, kj) is then one offset added to a vector's base, and 8 neighbouring
// output columns read 8 consecutive floats whatever the stride. Rows are wide enough for whole
// vectors: the lanes past the last output column read zeros, and their results are discarded.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX2_FMA

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "common.h"
#include "conv2d/conv2d_cpu_direct.h"
#include "cpu_cache.h"

#include "cpu_isa_target.h"  // last: the code below is compiled for AVX2 + FMA

namespace cnnext {
namespace {

constexpr int64_t kLanes = 8;  // floats per AVX2 vector: output columns per vector
// The weight gradient's register tile: 4 output channels x 3 taps (the forward picks between
// 4 x 3 and 3 x 4 per geometry, see ForwardTile). Packed dy pads Cout to whole channel tiles.
constexpr int64_t kTileChannels = 4;
constexpr int64_t kTileTaps = 3;
// Samples of the weight gradient are processed in groups whose padded inputs and gradients fit in
// half of the core's L2 (cpu_cache.h), so each group is read from L2, not DRAM, by every tile.
int64_t group_bytes() { return cpu_l2_cache_bytes() / 2; }

std::unique_ptr<float[]> uninitialized(int64_t count) { return std::unique_ptr<float[]>(new float[count]); }

// Where everything of one sample lives in the padded copy, and where each tap and vector starts.
struct DirectPlan {
  int64_t rows, width;  // per channel: rows x (stride_w phases x width) floats
  int64_t row_stride, channel_stride, sample_size;
  int64_t vectors_per_row, vectors;  // output vectors of 8 columns: per row, per sample
  int64_t taps, channel_tiles;       // C * kh * kw; ceil(Cout / kTileChannels)
  std::vector<int64_t> tap_offset;   // (c, ki, kj) -> offset from a vector's base
  std::vector<int64_t> vector_base;  // vector v -> offset of its first tap (c, ki, kj = 0)
  // Where the padded copy would equal the input itself (no padding, stride 1 along rows, rows of
  // whole vectors plus the kernel's reach), and the packed output gradient dy itself (rows of
  // whole vectors, channels a multiple of the tile): the kernels then read them in place.
  bool input_in_place, grad_in_place;
  // Which rows and stride phases of the padded copy any tap reads: a strided 1x1 convolution reads
  // one phase of every stride_h-th row, and packing only those saves most of the copy.
  std::vector<bool> row_read, phase_read;

  explicit DirectPlan(const Conv2dGeometry& g) {
    vectors_per_row = ceil_div(g.out_w, kLanes);
    vectors = g.out_h * vectors_per_row;
    rows = (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dil_h + 1;
    width = vectors_per_row * kLanes + (g.kernel_w - 1) * g.dil_w / g.stride_w;
    row_stride = g.stride_w * width;
    channel_stride = rows * row_stride;
    sample_size = g.in_channels * channel_stride;
    taps = g.patch_size();
    channel_tiles = ceil_div(g.out_channels, kTileChannels);
    tap_offset.reserve(taps);
    for (int64_t c = 0; c < g.in_channels; ++c)
      for (int64_t ki = 0; ki < g.kernel_h; ++ki)
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t column = kj * g.dil_w;
          tap_offset.push_back(c * channel_stride + ki * g.dil_h * row_stride +
                               (column % g.stride_w) * width + column / g.stride_w);
        }
    vector_base.reserve(vectors);
    for (int64_t v = 0; v < vectors; ++v)
      vector_base.push_back(v / vectors_per_row * g.stride_h * row_stride + v % vectors_per_row * kLanes);
    input_in_place = g.pad_h == 0 && g.pad_w == 0 && g.stride_w == 1 && rows == g.in_h && width == g.in_w;
    row_read.assign(rows, false);
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) row_read[oh * g.stride_h + ki * g.dil_h] = true;
    phase_read.assign(g.stride_w, false);
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) phase_read[kj * g.dil_w % g.stride_w] = true;
    grad_in_place = g.out_w % kLanes == 0 && g.out_channels % kTileChannels == 0;
  }
  int64_t out_row(int64_t v) const { return v / vectors_per_row; }
  int64_t out_col(int64_t v) const { return v % vectors_per_row * kLanes; }
};

// One input row -> both stride phases of its padded copy, for stride 2: phase 0 holds the even
// and phase 1 the odd padded columns, so 16 input columns split into 8 + 8 with two shuffles each
// instead of a scalar gather per column (benchmarks/NOTES.md, "Figures moved out of the code").
// Padded column j is input column j - pad; columns outside the input are zeros.
void pack_row_stride2(const float* src, float* even, float* odd, int64_t width, int64_t in_w, int64_t pad) {
  const auto at = [&](int64_t column) { return column >= 0 && column < in_w ? src[column] : 0.f; };
  int64_t q = 0;
  for (; q < width && 2 * q - pad < 0; ++q) {
    even[q] = at(2 * q - pad);
    odd[q] = at(2 * q + 1 - pad);
  }
  for (; q + kLanes <= width && 2 * q + 2 * kLanes - 1 - pad < in_w; q += kLanes) {
    const __m256 a = _mm256_loadu_ps(src + 2 * q - pad), b = _mm256_loadu_ps(src + 2 * q - pad + kLanes);
    // Per 128-bit lane [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit permute puts a's pairs before b's.
    const __m256 evens = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 odds = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(even + q, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(evens), 0xD8)));
    _mm256_storeu_ps(odd + q, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odds), 0xD8)));
  }
  for (; q < width; ++q) {
    even[q] = at(2 * q - pad);
    odd[q] = at(2 * q + 1 - pad);
  }
}

// x (C, H, W) of one sample -> its padded, phase-split copy (every float that a tap reads is
// written; rows and phases no tap reads are left as they were).
void pack_input(const float* x, float* dst, const Conv2dGeometry& g, const DirectPlan& p) {
  for (int64_t c = 0; c < g.in_channels; ++c) {
    for (int64_t r = 0; r < p.rows; ++r) {
      if (!p.row_read[r]) continue;
      float* row = dst + c * p.channel_stride + r * p.row_stride;
      const int64_t ih = r - g.pad_h;
      if (ih < 0 || ih >= g.in_h) {
        std::fill(row, row + p.row_stride, 0.f);
        continue;
      }
      const float* src = x + (c * g.in_h + ih) * g.in_w;
      if (g.stride_w == 2 && p.phase_read[0] && p.phase_read[1]) {
        pack_row_stride2(src, row, row + p.width, p.width, g.in_w, g.pad_w);
        continue;
      }
      for (int64_t phase = 0; phase < g.stride_w; ++phase) {
        if (!p.phase_read[phase]) continue;
        float* out = row + phase * p.width;
        // out[q] holds input column q * stride_w + phase - pad_w where that is inside the image.
        const auto [lo, hi] = tap_output_range(p.width, g.in_w, g.stride_w, g.pad_w, phase);
        std::fill(out, out + lo, 0.f);
        if (g.stride_w == 1) {
          std::copy(src + lo - g.pad_w, src + hi - g.pad_w, out + lo);
        } else {
          for (int64_t q = lo; q < hi; ++q) out[q] = src[q * g.stride_w + phase - g.pad_w];
        }
        std::fill(out + hi, out + p.width, 0.f);
      }
    }
  }
}

// w (Cout, taps) -> (ceil(Cout / channels), taps, channels): a tile's weights of one tap are
// adjacent; channels past Cout are zero.
std::unique_ptr<float[]> pack_weights(const float* w, int64_t channels, const Conv2dGeometry& g,
                                      const DirectPlan& p) {
  const int64_t tiles = ceil_div(g.out_channels, channels);
  auto packed = uninitialized(tiles * p.taps * channels);
  for (int64_t tile = 0; tile < tiles; ++tile)
    for (int64_t t = 0; t < p.taps; ++t)
      for (int64_t j = 0; j < channels; ++j) {
        const int64_t co = tile * channels + j;
        packed[(tile * p.taps + t) * channels + j] = co < g.out_channels ? w[co * p.taps + t] : 0.f;
      }
  return packed;
}

// Lanes [0, n) of a store mask.
__m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The forward register tile: Channels output channels x Vectors vectors, 12 accumulators either
// way (4 x 3 or 3 x 4). Per tap the smaller side is held in registers and the larger one
// streamed, so accumulators + held values + one streamed value fit AVX2's 16 registers.
template <int64_t Channels, int64_t Vectors>
struct ForwardTile {
  static_assert(Channels * Vectors == 12, "12 accumulators: 16 registers minus the operands");

  // How many outputs this tile shape computes for the geometry, idle slots of short tiles included.
  static int64_t computed(const Conv2dGeometry& g, const DirectPlan& p) {
    return ceil_div(g.out_channels, Channels) * Channels * ceil_div(p.vectors, Vectors) * Vectors;
  }

  // Output channel tiles [tile_begin, tile_end) of one sample from its padded input: every
  // register tile accumulates over all taps, starting from the bias.
  static void sample(const float* padded, const float* packed_w, const float* bias, float* out,
                     int64_t tile_begin, int64_t tile_end, const Conv2dGeometry& g, const DirectPlan& p) {
    const int64_t Ho = g.out_h, Wo = g.out_w, L = Ho * Wo;
    const int64_t* offsets = p.tap_offset.data();
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const float* wt = packed_w + tile * p.taps * Channels;
      __m256 init[Channels];
      for (int64_t j = 0; j < Channels; ++j) {
        const int64_t co = tile * Channels + j;
        init[j] = _mm256_set1_ps(bias != nullptr && co < g.out_channels ? bias[co] : 0.f);
      }
      for (int64_t v0 = 0; v0 < p.vectors; v0 += Vectors) {
        // A short last tile repeats vector v0 in its idle slots (computed, never stored).
        const float* base[Vectors];
        for (int64_t i = 0; i < Vectors; ++i)
          base[i] = padded + p.vector_base[v0 + i < p.vectors ? v0 + i : v0];
        __m256 acc[Channels][Vectors];
#pragma GCC unroll 4
        for (int64_t j = 0; j < Channels; ++j)
#pragma GCC unroll 4
          for (int64_t i = 0; i < Vectors; ++i) acc[j][i] = init[j];
        for (int64_t t = 0; t < p.taps; ++t) {
          const int64_t offset = offsets[t];
          const float* w_tap = wt + t * Channels;
          if constexpr (Vectors <= Channels) {  // hold the input vectors, stream the weights
            __m256 xv[Vectors];
#pragma GCC unroll 4
            for (int64_t i = 0; i < Vectors; ++i) xv[i] = _mm256_loadu_ps(base[i] + offset);
#pragma GCC unroll 4
            for (int64_t j = 0; j < Channels; ++j) {
              const __m256 wv = _mm256_broadcast_ss(w_tap + j);
#pragma GCC unroll 4
              for (int64_t i = 0; i < Vectors; ++i) acc[j][i] = _mm256_fmadd_ps(wv, xv[i], acc[j][i]);
            }
          } else {  // hold the weights, stream the input vectors
            __m256 wv[Channels];
#pragma GCC unroll 4
            for (int64_t j = 0; j < Channels; ++j) wv[j] = _mm256_broadcast_ss(w_tap + j);
#pragma GCC unroll 4
            for (int64_t i = 0; i < Vectors; ++i) {
              const __m256 xv = _mm256_loadu_ps(base[i] + offset);
#pragma GCC unroll 4
              for (int64_t j = 0; j < Channels; ++j) acc[j][i] = _mm256_fmadd_ps(wv[j], xv, acc[j][i]);
            }
          }
        }
        for (int64_t i = 0; i < Vectors && v0 + i < p.vectors; ++i) {
          // A row's short last vector is stored whole: its extra lanes land at the start of the
          // next output row, which a later store of this thread overwrites (vectors are stored in
          // order). Only the plane's last vector is masked (a masked store is slow on AMD Zen).
          const int64_t v = v0 + i, oh = p.out_row(v), ow = p.out_col(v);
          const bool whole = v + 1 < p.vectors || Wo - ow >= kLanes;
          const __m256i mask = first_lanes(Wo - ow);
          for (int64_t j = 0; j < Channels; ++j) {
            const int64_t co = tile * Channels + j;
            if (co >= g.out_channels) break;
            float* dst = out + co * L + oh * Wo + ow;
            if (whole) {
              _mm256_storeu_ps(dst, acc[j][i]);
            } else {
              _mm256_maskstore_ps(dst, mask, acc[j][i]);
            }
          }
        }
      }
    }
  }
};

// dy (Cout, Ho, Wo) of one sample -> (channel_tiles * 4, vectors, 8): whole vectors, zeros past
// the last output column and past Cout, so the weight-gradient tiles need no masks.
void pack_grad_output(const float* dy, float* dst, const Conv2dGeometry& g, const DirectPlan& p) {
  const int64_t Wo = g.out_w, L = g.out_h * Wo;
  for (int64_t co = 0; co < p.channel_tiles * kTileChannels; ++co) {
    for (int64_t v = 0; v < p.vectors; ++v) {
      float* out = dst + (co * p.vectors + v) * kLanes;
      const int64_t ow = p.out_col(v), lanes = co < g.out_channels ? std::min(kLanes, Wo - ow) : 0;
      const float* src = dy + co * L + p.out_row(v) * Wo + ow;
      std::copy(src, src + lanes, out);
      std::fill(out + lanes, out + kLanes, 0.f);
    }
  }
}

// Whether every x[0, n) is finite: x - x is 0 for finite x, NaN for inf and NaN.
bool all_finite(const float* x, int64_t n) {
  __m256 any = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = _mm256_loadu_ps(x + i);
    any = _mm256_or_ps(any, _mm256_sub_ps(v, v));
  }
  bool finite = _mm256_movemask_ps(_mm256_cmp_ps(any, any, _CMP_UNORD_Q)) == 0;
  for (; i < n; ++i) finite = finite && std::isfinite(x[i]);
  return finite;
}

float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Adds into rows [4 tile_begin, 4 tile_end) of dw (Cout, taps) the weight gradient of `count`
// samples whose padded inputs and packed output gradients are consecutive in `padded` and `grad`:
// every (channel tile, 3 taps) register tile accumulates 8-lane partial sums over all their
// vectors, then sums its lanes once. kMaskLanes: the input lanes past a row's last output are
// zeroed before the products. Their dy is zero, so this only matters for an inf or NaN input
// there, which 0 * x would turn into NaN in a tap native never pairs it with (see
// conv2d_direct_weight_grad: used only when rows are not whole vectors and the input is not all
// finite).
template <bool kMaskLanes>
void weight_grad_group(const float* padded, const float* grad, int64_t count, float* dw, int64_t tile_begin,
                       int64_t tile_end, const Conv2dGeometry& g, const DirectPlan& p) {
  const int64_t grad_size = p.channel_tiles * kTileChannels * p.vectors * kLanes;
  const int64_t* bases = p.vector_base.data();
  std::vector<int32_t> lane_masks;  // per vector: all ones on its output lanes, zero past them
  if constexpr (kMaskLanes) {
    lane_masks.resize(p.vectors * kLanes);
    for (int64_t v = 0; v < p.vectors; ++v)
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        lane_masks[v * kLanes + lane] = p.out_col(v) + lane < g.out_w ? -1 : 0;
      }
  }
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    for (int64_t t0 = 0; t0 < p.taps; t0 += kTileTaps) {
      int64_t offset[kTileTaps];  // a short last tile repeats tap t0 (summed, never stored)
      for (int64_t i = 0; i < kTileTaps; ++i) offset[i] = p.tap_offset[t0 + i < p.taps ? t0 + i : t0];
      __m256 acc[kTileChannels][kTileTaps];
#pragma GCC unroll 4
      for (int64_t j = 0; j < kTileChannels; ++j)
#pragma GCC unroll 3
        for (int64_t i = 0; i < kTileTaps; ++i) acc[j][i] = _mm256_setzero_ps();
      for (int64_t n = 0; n < count; ++n) {
        const float* x = padded + n * p.sample_size;
        const float* y = grad + n * grad_size + tile * kTileChannels * p.vectors * kLanes;
        for (int64_t v = 0; v < p.vectors; ++v) {
          const float* xb = x + bases[v];
          __m256 xv[kTileTaps];
#pragma GCC unroll 3
          for (int64_t i = 0; i < kTileTaps; ++i) xv[i] = _mm256_loadu_ps(xb + offset[i]);
          if constexpr (kMaskLanes) {
            const __m256 keep = _mm256_castsi256_ps(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lane_masks.data() + v * kLanes)));
#pragma GCC unroll 3
            for (int64_t i = 0; i < kTileTaps; ++i) xv[i] = _mm256_and_ps(xv[i], keep);
          }
#pragma GCC unroll 4
          for (int64_t j = 0; j < kTileChannels; ++j) {
            const __m256 yv = _mm256_loadu_ps(y + (j * p.vectors + v) * kLanes);
#pragma GCC unroll 3
            for (int64_t i = 0; i < kTileTaps; ++i) acc[j][i] = _mm256_fmadd_ps(yv, xv[i], acc[j][i]);
          }
        }
      }
      for (int64_t j = 0; j < kTileChannels; ++j) {
        const int64_t co = tile * kTileChannels + j;
        if (co >= g.out_channels) break;
        for (int64_t i = 0; i < kTileTaps && t0 + i < p.taps; ++i) {
          dw[co * p.taps + t0 + i] += horizontal_sum(acc[j][i]);
        }
      }
    }
  }
}

// The forward pass with one tile shape. With at least as many samples as threads, each thread
// takes whole samples; with fewer (small batches, inference), samples run one after another and
// the threads split the output channels.
template <int64_t Channels, int64_t Vectors>
void forward_with_tile(const float* x, const float* w, const float* bias, float* out, const Conv2dGeometry& g,
                       const DirectPlan& plan) {
  using Tile = ForwardTile<Channels, Vectors>;
  const auto packed_w = pack_weights(w, Channels, g, plan);
  const int64_t tiles = ceil_div(g.out_channels, Channels);
  const int64_t in_sample = g.in_channels * g.in_h * g.in_w, out_sample = g.out_channels * g.out_pixels();
  // Sample n's padded input: the input itself, or its copy in `buffer`.
  const auto padded_sample = [&](int64_t n, float* buffer) -> const float* {
    if (plan.input_in_place) return x + n * in_sample;
    pack_input(x + n * in_sample, buffer, g, plan);
    return buffer;
  };
  const int64_t buffer_size = plan.input_in_place ? 0 : plan.sample_size;
  if (g.batch >= at::get_num_threads()) {
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      auto buffer = uninitialized(buffer_size);
      for (int64_t n = begin; n < end; ++n) {
        Tile::sample(padded_sample(n, buffer.get()), packed_w.get(), bias, out + n * out_sample, 0, tiles, g,
                     plan);
      }
    });
    return;
  }
  auto buffer = uninitialized(buffer_size);
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* padded = padded_sample(n, buffer.get());
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      Tile::sample(padded, packed_w.get(), bias, out + n * out_sample, begin, end, g, plan);
    });
  }
}

}  // namespace

// The tile shape that leaves fewer outputs idle: 4 channels x 3 vectors, or 3 x 4 (8x8 maps have
// 8 vectors per channel: tiles of 3 + 3 + 2 compute a ninth for nothing, 4 + 4 nothing).
void conv2d_direct_forward(const float* x, const float* w, const float* bias, float* out,
                           const Conv2dGeometry& geometry) {
  const Conv2dGeometry g = conv2d_direct_geometry(geometry);
  const DirectPlan plan(g);
  if (ForwardTile<3, 4>::computed(g, plan) < ForwardTile<4, 3>::computed(g, plan)) {
    forward_with_tile<3, 4>(x, w, bias, out, g, plan);
  } else {
    forward_with_tile<4, 3>(x, w, bias, out, g, plan);
  }
}

// Samples go in groups that fit L2 (group_bytes). With at least as many samples as threads, each
// thread sums its own samples into a private dw and the partial dws are added in thread order;
// with fewer, the threads split the output channels of every group (each owns its rows of dw).
void conv2d_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dGeometry& geometry) {
  const Conv2dGeometry g = conv2d_direct_geometry(geometry);
  const DirectPlan plan(g);
  const int64_t in_sample = g.in_channels * g.in_h * g.in_w, out_sample = g.out_channels * g.out_pixels();
  const int64_t grad_size = plan.channel_tiles * kTileChannels * plan.vectors * kLanes;
  const int64_t group =
      std::max<int64_t>(1, group_bytes() / ((plan.sample_size + grad_size) * int64_t(sizeof(float))));
  const int64_t weight_size = g.out_channels * plan.taps;
  // Lanes past a row's last output read input values with zero dy; masking them is costly on
  // narrow maps (NOTES.md, "Figures moved out of the code"), so it is done only where an inf or
  // NaN input could make 0 * x a NaN.
  const bool mask_lanes = g.out_w % kLanes != 0 && !all_finite(x, g.batch * in_sample);
  // One thread's group buffers (empty where the kernels read in place).
  struct GroupBuffers {
    std::unique_ptr<float[]> padded, grad;
  };
  const auto group_buffers = [&](int64_t count) {
    return GroupBuffers{uninitialized(plan.input_in_place ? 0 : count * plan.sample_size),
                        uninitialized(plan.grad_in_place ? 0 : count * grad_size)};
  };
  // Adds samples [n0, n1) into the rows of tiles [tile_begin, tile_end) of `sum`: packs them
  // into the buffers first unless they are read in place.
  const auto add_group = [&](GroupBuffers& buffers, int64_t n0, int64_t n1, float* sum, int64_t tile_begin,
                             int64_t tile_end) {
    const float* padded = plan.input_in_place ? x + n0 * in_sample : buffers.padded.get();
    const float* grad = plan.grad_in_place ? dy + n0 * out_sample : buffers.grad.get();
    if (mask_lanes) {
      weight_grad_group<true>(padded, grad, n1 - n0, sum, tile_begin, tile_end, g, plan);
    } else {
      weight_grad_group<false>(padded, grad, n1 - n0, sum, tile_begin, tile_end, g, plan);
    }
  };
  const auto pack_group = [&](GroupBuffers& buffers, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      if (!plan.input_in_place)
        pack_input(x + n * in_sample, buffers.padded.get() + (n - n0) * plan.sample_size, g, plan);
      if (!plan.grad_in_place)
        pack_grad_output(dy + n * out_sample, buffers.grad.get() + (n - n0) * grad_size, g, plan);
    }
  };
  std::fill(dw, dw + weight_size, 0.f);
  if (g.batch < at::get_num_threads()) {
    auto buffers = group_buffers(std::min(group, g.batch));
    for (int64_t n0 = 0; n0 < g.batch; n0 += group) {
      const int64_t n1 = std::min(g.batch, n0 + group);
      pack_group(buffers, n0, n1);
      at::parallel_for(0, plan.channel_tiles, 1,
                       [&](int64_t begin, int64_t end) { add_group(buffers, n0, n1, dw, begin, end); });
    }
    return;
  }
  std::vector<std::vector<float>> partial(at::get_num_threads());
  at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
    auto& sum = partial[at::get_thread_num()];
    if (sum.empty()) sum.assign(weight_size, 0.f);
    auto buffers = group_buffers(std::min(group, end - begin));
    for (int64_t n0 = begin; n0 < end; n0 += group) {
      const int64_t n1 = std::min(end, n0 + group);
      pack_group(buffers, n0, n1);
      add_group(buffers, n0, n1, sum.data(), 0, plan.channel_tiles);
    }
  });
  for (const auto& sum : partial)
    if (!sum.empty())
      for (int64_t i = 0; i < weight_size; ++i) dw[i] += sum[i];
}

}  // namespace cnnext

#else  // not x86-64: the GEMM path serves every case (conv2d_direct_applies is false)

#include "conv2d/conv2d_cpu_direct.h"

namespace cnnext {
void conv2d_direct_forward(const float*, const float*, const float*, float*, const Conv2dGeometry&) {
  TORCH_CHECK(false, "conv2d: the direct kernels need an x86-64 CPU");
}
void conv2d_direct_weight_grad(const float*, const float*, float*, const Conv2dGeometry&) {
  TORCH_CHECK(false, "conv2d: the direct kernels need an x86-64 CPU");
}
}  // namespace cnnext

#endif
