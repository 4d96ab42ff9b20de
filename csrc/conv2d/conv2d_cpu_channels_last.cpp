// Channels_last float32 conv2d kernels, AVX-512 (see conv2d_cpu_channels_last.h for what and why).
//
// Register tiles: 32 vector registers hold P x V accumulators, the V weight (or dy) vectors of one
// input channel and nothing else: the other operand is an embedded broadcast from memory. The
// shapes per V (forward P pixels, weight gradient R input channels) keep 20-24 accumulators, enough
// independent FMAs to cover the FMA latency on two pipes; the last tile of a row (or of the
// channels) uses a smaller instantiation of the same template instead of idle slots.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX512

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"
#include "conv2d/conv2d_cpu_channels_last.h"
#include "conv2d/conv2d_cpu_direct.h"
#include "cpu_cache.h"

#include "cpu_isa_target.h"  // last: the code below is compiled for AVX-512

namespace cnnext {
namespace {

constexpr int64_t kLanes = 16;       // channels per vector
constexpr int kMaxBlockVectors = 4;  // vectors of output channels in one register tile
// Forward tile widths (output pixels) and weight-gradient tile heights (input channels) by V.
constexpr int kForwardPixels[kMaxBlockVectors] = {12, 10, 8, 6};
constexpr int kGradChannels[kMaxBlockVectors] = {16, 12, 8, 6};

// Output channels in blocks of at most kMaxBlockVectors vectors, as even as possible (80 channels,
// five vectors, are blocks of 3 + 2, not 4 + 1, so no tile is mostly idle).
struct ChannelBlock {
  int64_t first_channel;
  int vectors;
};

std::vector<ChannelBlock> channel_blocks(int64_t channels) {
  const int64_t vectors = ceil_div(channels, kLanes), count = ceil_div(vectors, int64_t{kMaxBlockVectors});
  std::vector<ChannelBlock> blocks;
  int64_t first_vector = 0;
  for (int64_t b = 0; b < count; ++b) {
    const int64_t v = vectors / count + (b < vectors % count ? 1 : 0);
    blocks.push_back({first_vector * kLanes, static_cast<int>(v)});
    first_vector += v;
  }
  return blocks;
}

// The lanes of the vector starting at `channel` that hold one of `channels` channels.
__mmask16 channel_mask(int64_t channel, int64_t channels) {
  const int64_t n = std::clamp<int64_t>(channels - channel, 0, kLanes);
  return static_cast<__mmask16>((1u << n) - 1u);
}

std::unique_ptr<float[]> zeroed(int64_t count) { return std::unique_ptr<float[]>(new float[count]()); }

// Calls table[i] = &Fn<i + 1, V>... : the instantiations for every tile size up to Max.
template <typename Fn, template <int, int> class Tile, int V, int... I>
constexpr auto tile_table(std::integer_sequence<int, I...>) {
  return std::array<Fn, sizeof...(I)>{&Tile<I + 1, V>::run...};
}

// Splits `length` into the fewest pieces of at most `most`, as even as possible; calls fn(start, size).
template <typename Fn>
void even_pieces(int64_t length, int64_t most, const Fn& fn) {
  const int64_t count = ceil_div(length, most);
  int64_t start = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t size = length / count + (i < length % count ? 1 : 0);
    fn(start, size);
    start += size;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

struct ForwardContext {
  const Conv2dGeometry& g;
  const float* x;      // (N, H, W, C)
  const float* zeros;  // C zeros: what a tap in the padding reads
  const float* bias;   // (padded Cout): zeros past Cout, or all zeros without a bias
  ChannelsLastOut out;
};

// w (Cout, C, kh, kw) -> per block (kh, kw, C, V * 16), channels past Cout zero. Returns the
// packed weights; block b starts at its first channel * taps (blocks are consecutive).
std::unique_ptr<float[]> pack_forward_weights(const float* w, const Conv2dGeometry& g,
                                              const std::vector<ChannelBlock>& blocks) {
  const int64_t C = g.in_channels, taps = g.kernel_h * g.kernel_w,
                padded = ceil_div(g.out_channels, kLanes) * kLanes;
  auto packed = zeroed(padded * C * taps);
  for (const auto& block : blocks) {
    const int64_t width = block.vectors * kLanes;
    float* dst = packed.get() + block.first_channel * C * taps;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < width; ++j) {
          const int64_t co = block.first_channel + j;
          if (co < g.out_channels) dst[(t * C + c) * width + j] = w[(co * C + c) * taps + t];
        }
  }
  return packed;
}

// One register tile: output pixels [ow0, ow0 + P) of row (n, oh), channels [co0, co0 + 16 V).
template <int P, int V>
struct ForwardTile {
  static void run(const ForwardContext& c, const float* w_block, int64_t n, int64_t oh, int64_t ow0,
                  int64_t co0) {
    const Conv2dGeometry& g = c.g;
    const int64_t C = g.in_channels;
    __m512 acc[P][V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const __m512 b = _mm512_loadu_ps(c.bias + co0 + v * kLanes);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[p][v] = b;
    }
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const float* row = c.x + (n * g.in_h + ih) * g.in_w * C;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const float* px[P];
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          const int64_t iw = (ow0 + p) * g.stride_w - g.pad_w + kj * g.dil_w;
          px[p] = iw >= 0 && iw < g.in_w ? row + iw * C : c.zeros;
        }
        const float* wk = w_block + (ki * g.kernel_w + kj) * C * V * kLanes;
        for (int64_t ci = 0; ci < C; ++ci) {
          __m512 wv[V];
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(wk + (ci * V + v) * kLanes);
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p) {
            const __m512 xv = _mm512_set1_ps(px[p][ci]);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(xv, wv[v], acc[p][v]);
          }
        }
      }
    }
    float* dst = c.out.data + n * c.out.sample + oh * c.out.row_step + ow0 * c.out.column_step + co0;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        _mm512_mask_storeu_ps(dst + p * c.out.column_step + v * kLanes,
                              channel_mask(co0 + v * kLanes, g.out_channels), acc[p][v]);
  }
};

using ForwardTileFn = void (*)(const ForwardContext&, const float*, int64_t, int64_t, int64_t, int64_t);

template <int V>
constexpr auto forward_tiles() {
  return tile_table<ForwardTileFn, ForwardTile, V>(std::make_integer_sequence<int, kForwardPixels[V - 1]>());
}

// [V - 1][P - 1] -> ForwardTile<P, V>::run.
const std::array<ForwardTileFn, kForwardPixels[0]> forward_tile_1 = forward_tiles<1>();
const std::array<ForwardTileFn, kForwardPixels[1]> forward_tile_2 = forward_tiles<2>();
const std::array<ForwardTileFn, kForwardPixels[2]> forward_tile_3 = forward_tiles<3>();
const std::array<ForwardTileFn, kForwardPixels[3]> forward_tile_4 = forward_tiles<4>();

ForwardTileFn forward_tile(int vectors, int64_t pixels) {
  switch (vectors) {
    case 1:
      return forward_tile_1[pixels - 1];
    case 2:
      return forward_tile_2[pixels - 1];
    case 3:
      return forward_tile_3[pixels - 1];
    default:
      return forward_tile_4[pixels - 1];
  }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient

struct WeightGradContext {
  const Conv2dGeometry& g;
  const float* dy;          // (N, Ho, Wo, Cout)
  const float* x;           // (N, H, W, C)
  int64_t padded_channels;  // Cout rounded up to whole vectors: the row length of a partial sum
};

// One register tile: input channels [ci0, ci0 + R) x output channels [co0, co0 + 16 V) of tap
// (ki, kj), summed over output rows [row_begin, row_end) (rows of all samples, n * Ho + oh) and
// added into `partial` ((kh, kw, C, padded_channels)).
template <int R, int V>
struct WeightGradTile {
  static void run(const WeightGradContext& c, int64_t row_begin, int64_t row_end, int64_t ki, int64_t kj,
                  int64_t ci0, int64_t co0, float* partial) {
    const Conv2dGeometry& g = c.g;
    const int64_t C = g.in_channels, Cout = g.out_channels, x_step = g.stride_w * C;
    const auto [ow_lo, ow_hi] = tap_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
    if (ow_lo >= ow_hi) return;
    __mmask16 mask[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) mask[v] = channel_mask(co0 + v * kLanes, Cout);
    __m512 acc[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t n = row / g.out_h, oh = row % g.out_h;
      const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const float* xp =
          c.x + ((n * g.in_h + ih) * g.in_w + ow_lo * g.stride_w - g.pad_w + kj * g.dil_w) * C + ci0;
      const float* yp = c.dy + (row * g.out_w + ow_lo) * Cout + co0;
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow, xp += x_step, yp += Cout) {
        __m512 yv[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) yv[v] = _mm512_maskz_loadu_ps(mask[v], yp + v * kLanes);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const __m512 xv = _mm512_set1_ps(xp[r]);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(xv, yv[v], acc[r][v]);
        }
      }
    }
    float* dst = partial + ((ki * g.kernel_w + kj) * C + ci0) * c.padded_channels + co0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        float* d = dst + r * c.padded_channels + v * kLanes;
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), acc[r][v]));
      }
  }
};

using WeightGradTileFn = void (*)(const WeightGradContext&, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, float*);

template <int V>
constexpr auto weight_grad_tiles() {
  return tile_table<WeightGradTileFn, WeightGradTile, V>(
      std::make_integer_sequence<int, kGradChannels[V - 1]>());
}

const std::array<WeightGradTileFn, kGradChannels[0]> weight_grad_tile_1 = weight_grad_tiles<1>();
const std::array<WeightGradTileFn, kGradChannels[1]> weight_grad_tile_2 = weight_grad_tiles<2>();
const std::array<WeightGradTileFn, kGradChannels[2]> weight_grad_tile_3 = weight_grad_tiles<3>();
const std::array<WeightGradTileFn, kGradChannels[3]> weight_grad_tile_4 = weight_grad_tiles<4>();

WeightGradTileFn weight_grad_tile(int vectors, int64_t channels) {
  switch (vectors) {
    case 1:
      return weight_grad_tile_1[channels - 1];
    case 2:
      return weight_grad_tile_2[channels - 1];
    case 3:
      return weight_grad_tile_3[channels - 1];
    default:
      return weight_grad_tile_4[channels - 1];
  }
}

// Adds the sum over rows [row_begin, row_end) of dy into sum (Cout), each row summed in float
// vectors first (at most one row of pixels per float sum).
void add_bias_grad(const Conv2dGeometry& g, const float* dy, int64_t row_begin, int64_t row_end,
                   double* sum) {
  const int64_t Cout = g.out_channels;
  alignas(64) float lanes[kLanes];
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t co0 = 0; co0 < Cout; co0 += kLanes) {
      const __mmask16 mask = channel_mask(co0, Cout);
      const float* yp = dy + row * g.out_w * Cout + co0;
      __m512 s = _mm512_setzero_ps();
      for (int64_t ow = 0; ow < g.out_w; ++ow)
        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(mask, yp + ow * Cout));
      _mm512_store_ps(lanes, s);
      for (int64_t j = 0; j < kLanes && co0 + j < Cout; ++j) sum[co0 + j] += lanes[j];
    }
  }
}

// The pixel rows of one L2-sized block of output rows: dy's rows and the input rows they read.
int64_t rows_per_block(const Conv2dGeometry& g) {
  const int64_t row_bytes =
      (g.out_w * g.out_channels + g.stride_h * g.in_w * g.in_channels) * int64_t(sizeof(float));
  return std::max<int64_t>(1, cpu_l2_cache_bytes() / 2 / std::max<int64_t>(row_bytes, 1));
}

// Whether a geometry may be computed as a 1x1 convolution over one long row: the direct
// kernels' flattening (conv2d_cpu_direct.h) where the output rows are also contiguous.
Conv2dGeometry flattened(const Conv2dGeometry& g, const ChannelsLastOut& out) {
  const Conv2dGeometry flat = conv2d_direct_geometry(g);
  return out.row_step == out.column_step * g.out_w ? flat : g;
}

}  // namespace

void conv2d_channels_last_forward(const float* x, const float* w, const float* bias,
                                  const ChannelsLastOut& out, const Conv2dGeometry& geometry) {
  const Conv2dGeometry g = flattened(geometry, out);
  const auto blocks = channel_blocks(g.out_channels);
  const int64_t padded = ceil_div(g.out_channels, kLanes) * kLanes;
  const auto packed = pack_forward_weights(w, g, blocks);
  auto padded_bias = zeroed(padded);
  if (bias != nullptr) std::copy(bias, bias + g.out_channels, padded_bias.get());
  const auto zeros = zeroed(g.in_channels);
  const ForwardContext context{g, x, zeros.get(), padded_bias.get(), out};
  const int64_t taps = g.kernel_h * g.kernel_w, block_count = static_cast<int64_t>(blocks.size());
  // Work items: (output row, channel block), blocks innermost so a thread's blocks share input rows.
  at::parallel_for(0, g.batch * g.out_h * block_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / block_count;
      const ChannelBlock& block = blocks[item % block_count];
      const float* w_block = packed.get() + block.first_channel * g.in_channels * taps;
      even_pieces(g.out_w, kForwardPixels[block.vectors - 1], [&](int64_t ow0, int64_t pixels) {
        forward_tile(block.vectors, pixels)(context, w_block, row / g.out_h, row % g.out_h, ow0,
                                            block.first_channel);
      });
    }
  });
}

void conv2d_channels_last_weight_grad(const float* dy, const float* x, float* dw, float* dbias,
                                      const Conv2dGeometry& geometry) {
  const int64_t Cout = geometry.out_channels;
  const Conv2dGeometry g = flattened(geometry, {nullptr, 0, geometry.out_w * Cout, Cout});
  const int64_t C = g.in_channels, taps = g.kernel_h * g.kernel_w, rows = g.batch * g.out_h;
  const int64_t padded = ceil_div(Cout, kLanes) * kLanes, block_rows = rows_per_block(g);
  const auto blocks = channel_blocks(Cout);
  const WeightGradContext context{g, dy, x, padded};
  const int64_t threads = at::get_num_threads(), weight_size = dw != nullptr ? taps * C * padded : 0;
  std::vector<std::unique_ptr<float[]>> partial(threads);
  std::vector<std::vector<double>> partial_bias(threads);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    const int64_t t = at::get_thread_num();
    if (!partial[t]) partial[t] = zeroed(weight_size);
    if (dbias != nullptr && partial_bias[t].empty()) partial_bias[t].assign(Cout, 0.0);
    for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
      const int64_t r1 = std::min(end, r0 + block_rows);
      if (dbias != nullptr) add_bias_grad(g, dy, r0, r1, partial_bias[t].data());
      if (dw == nullptr) continue;
      for (const auto& block : blocks) {
        for (int64_t ki = 0; ki < g.kernel_h; ++ki)
          for (int64_t kj = 0; kj < g.kernel_w; ++kj)
            even_pieces(C, kGradChannels[block.vectors - 1], [&](int64_t ci0, int64_t channels) {
              weight_grad_tile(block.vectors, channels)(context, r0, r1, ki, kj, ci0, block.first_channel,
                                                        partial[t].get());
            });
      }
    }
  });
  if (dw != nullptr) {
    // (kh, kw, C, padded) partial sums -> dw (Cout, C, kh, kw), threads added in order.
    std::fill(dw, dw + Cout * C * taps, 0.f);
    for (const auto& sum : partial) {
      if (!sum) continue;
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t co = 0; co < Cout; ++co) dw[(co * C + c) * taps + t] += sum[(t * C + c) * padded + co];
    }
  }
  if (dbias != nullptr) {
    std::vector<double> total(Cout, 0.0);
    for (const auto& sum : partial_bias)
      for (int64_t co = 0; co < static_cast<int64_t>(sum.size()); ++co) total[co] += sum[co];
    for (int64_t co = 0; co < Cout; ++co) dbias[co] = static_cast<float>(total[co]);
  }
}

}  // namespace cnnext

#else  // not x86-64: the other kernels serve every case (conv2d_channels_last_applies is false)

#include "conv2d/conv2d_cpu_channels_last.h"

namespace cnnext {
void conv2d_channels_last_forward(const float*, const float*, const float*, const ChannelsLastOut&,
                                  const Conv2dGeometry&) {
  TORCH_CHECK(false, "conv2d: the channels_last kernels need an x86-64 CPU");
}
void conv2d_channels_last_weight_grad(const float*, const float*, float*, float*, const Conv2dGeometry&) {
  TORCH_CHECK(false, "conv2d: the channels_last kernels need an x86-64 CPU");
}
}  // namespace cnnext

#endif
