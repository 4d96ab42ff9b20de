// Channels_last float32 conv2d kernels, AVX-512 (see conv2d_cpu_channels_last.h for what and why).
//
// Register tiles: 32 vector registers hold P x V accumulators, the V weight (or dy) vectors of one
// input channel and nothing else: the other operand is an embedded broadcast from memory. The
// shapes per V (forward P pixels, weight gradient R input channels) keep 12-24 accumulators, enough
// independent FMAs to cover the FMA latency on two pipes; the last tile of a row (or of the
// channels) uses a smaller instantiation of the same template instead of idle slots.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX512

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <limits>
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

constexpr int64_t kLanes = 16;         // channels per vector
constexpr int kMaxBlockVectors = 4;    // vectors of output channels in one register tile
constexpr int kMaxForwardVectors = 2;  // ... in the forward's (see kForwardPixels)
// Forward tile widths (output pixels) and weight-gradient tile heights (input channels) by V. The
// forward's 12 x 2 tiles read each weight vector for 12 pixels: 3-10% faster than 6 x 4 tiles
// (which read them for 6) where the weights stream from L2; 14 x 2 spills (benchmarks/NOTES.md).
constexpr int kForwardPixels[kMaxForwardVectors] = {12, 12};
constexpr int kGradChannels[kMaxBlockVectors] = {16, 12, 8, 6};
// The forward's weights per channel block, above which its tiles prefetch them kPrefetchChannels
// input channels ahead (prefetches past the block's end are harmless: they do not fault).
constexpr int64_t kL1WeightBytes = 32 * 1024;
constexpr int64_t kPrefetchChannels = 8;

// Output channels in blocks of at most `most` vectors, as even as possible (with 4: 80 channels,
// five vectors, are blocks of 3 + 2, not 4 + 1, so no tile is mostly idle).
struct ChannelBlock {
  int64_t first_channel;
  int vectors;
};

std::vector<ChannelBlock> channel_blocks(int64_t channels, int64_t most = kMaxBlockVectors) {
  const int64_t vectors = ceil_div(channels, kLanes), count = ceil_div(vectors, most);
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

// {&Tile<1, V>::run, &Tile<2, V>::run, ...}: one instantiation per tile size, indexed by size - 1.
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

// The kernel rows [lo, hi) whose input row for output row oh is inside the input; the others
// read padding, and the tiles skip them (on 8x8 maps a sixth of a 3x3 convolution's taps).
std::pair<int64_t, int64_t> kernel_rows_inside(const Conv2dGeometry& g, int64_t oh) {
  const int64_t first = oh * g.stride_h - g.pad_h;  // input row of kernel row 0
  const int64_t lo = std::min(first >= 0 ? 0 : ceil_div(-first, g.dil_h), g.kernel_h);
  const int64_t hi = first > g.in_h - 1 ? 0 : (g.in_h - 1 - first) / g.dil_h + 1;
  return {lo, std::clamp(hi, lo, g.kernel_h)};
}

// A forward tile: output pixels [q0, q0 + size) of a sample (q = oh * Wo + ow), all of whose rows
// read the kernel rows [ki_lo, ki_hi) inside the input.
struct PixelTile {
  int64_t q0, size, ki_lo, ki_hi;
};

// A sample's pixels in tiles of at most `most`: consecutive output rows that read the same kernel
// rows are tiled together (a tile may span rows), each such group on its own.
std::vector<PixelTile> pixel_tiles(const Conv2dGeometry& g, int64_t most) {
  std::vector<PixelTile> tiles;
  for (int64_t oh = 0; oh < g.out_h;) {
    const auto rows = kernel_rows_inside(g, oh);
    int64_t end = oh + 1;
    while (end < g.out_h && kernel_rows_inside(g, end) == rows) ++end;
    even_pieces((end - oh) * g.out_w, most, [&](int64_t q, int64_t size) {
      tiles.push_back({oh * g.out_w + q, size, rows.first, rows.second});
    });
    oh = end;
  }
  return tiles;
}

// ---------------------------------------------------------------------------------------------
// The padded sample: one sample's input with the zero rows and columns its windows reach, rows and
// columns limited to those some window reads, so that every tap of every output pixel is an
// offset from the pixel's base and no tile checks bounds. Element (r, j) is input (r - pad_h,
// j - pad_w); negative padding (a phase of a strided input gradient) starts it inside the input.
// Tiles skip the kernel rows that fall in padding rows; taps in padding columns multiply zeros
// (on 8x8 maps a 3x3 kernel sends 1 tap in 12 there).

struct PaddedSample {
  int64_t rows, columns, channels;               // Hp, Wp, C
  int64_t row_lo, row_hi, column_lo, column_hi;  // the part that holds input values, [lo, hi)
  bool in_place;  // the input itself has this shape (no padding, nothing past the last window)

  explicit PaddedSample(const Conv2dGeometry& g)
      : rows((g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dil_h + 1),
        columns((g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dil_w + 1),
        channels(g.in_channels),
        row_lo(std::clamp<int64_t>(g.pad_h, 0, rows)),
        row_hi(std::clamp<int64_t>(g.in_h + g.pad_h, row_lo, rows)),
        column_lo(std::clamp<int64_t>(g.pad_w, 0, columns)),
        column_hi(std::clamp<int64_t>(g.in_w + g.pad_w, column_lo, columns)),
        in_place(g.pad_h == 0 && g.pad_w == 0 && columns == g.in_w && rows <= g.in_h) {}

  int64_t size() const { return rows * columns * channels; }

  // A buffer for `count` padded samples, zero where no input value goes (written once: the
  // copies only overwrite the input part); none where the input is read in place, unless the copy
  // is one of another layout (`relaid`: the row tiles' planar rows).
  std::unique_ptr<float[]> buffer(int64_t count, bool relaid = false) const {
    return zeroed(in_place && !relaid ? 0 : count * size());
  }

  // Sample x (H, W, C) as padded: the input itself, or its copy into dst.
  const float* of(const float* x, float* dst, const Conv2dGeometry& g) const {
    if (in_place) return x;
    const int64_t run = (column_hi - column_lo) * channels;
    for (int64_t r = row_lo; r < row_hi; ++r) {
      const float* src = x + ((r - g.pad_h) * g.in_w + column_lo - g.pad_w) * channels;
      std::copy(src, src + run, dst + (r * columns + column_lo) * channels);
    }
    return dst;
  }
};

// ---------------------------------------------------------------------------------------------
// Forward

struct ForwardContext {
  const Conv2dGeometry& g;
  const float* bias;  // (padded Cout): zeros past Cout, or all zeros without a bias
  ChannelsLastOut out;
  int64_t pixel_row_step, pixel_column_step;  // padded-sample offsets of output rows and columns
  int64_t tap_row_step;                       // offset between the kernel's rows of taps
};

// w (Cout, C, kh, kw) -> per block (kh, kw, C, V * 16), channels past Cout zero; block b starts at
// its first channel * C * taps (blocks are consecutive).
std::unique_ptr<float[]> pack_forward_weights(const float* w, const Conv2dGeometry& g,
                                              const std::vector<ChannelBlock>& blocks) {
  const int64_t C = g.in_channels, taps = g.kernel_h * g.kernel_w;
  auto packed = zeroed(ceil_div(g.out_channels, kLanes) * kLanes * C * taps);
  for (const auto& block : blocks) {
    const int64_t width = block.vectors * kLanes;
    float* dst = packed.get() + block.first_channel * C * taps;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < width && block.first_channel + j < g.out_channels; ++j)
          dst[(t * C + c) * width + j] = w[((block.first_channel + j) * C + c) * taps + t];
  }
  return packed;
}

// One register tile: output pixels [q0, q0 + P) of sample n (q = oh * Wo + ow: a tile may span
// rows) x channels [co0, co0 + 16 V), from the sample's padded input.
template <int P, int V>
struct ForwardTile {
  static void run(const ForwardContext& c, const float* padded, const float* w_block, int64_t n,
                  const PixelTile& tile, int64_t co0) {
    const Conv2dGeometry& g = c.g;
    const float* base[P];
    float* dst[P];
    int64_t oh = tile.q0 / g.out_w, ow = tile.q0 % g.out_w;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      base[p] = padded + oh * c.pixel_row_step + ow * c.pixel_column_step;
      dst[p] = c.out.data + n * c.out.sample + oh * c.out.row_step + ow * c.out.column_step + co0;
      if (++ow == g.out_w) ow = 0, ++oh;
    }
    __m512 acc[P][V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const __m512 b = _mm512_loadu_ps(c.bias + co0 + v * kLanes);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[p][v] = b;
    }
    const int64_t C = g.in_channels;
    // Weights past L1 stream from L2 for every tile; fetched 8 input channels ahead, the big
    // channel counts run 8-13% faster (benchmarks/NOTES.md), the small ones lose the extra loads.
    const bool prefetch = g.kernel_h * g.kernel_w * C * V * kLanes * int64_t(sizeof(float)) > kL1WeightBytes;
    // A kernel row's taps as runs of consecutive floats: with dil_w == 1 the whole row in one run
    // of kw * C (neighbouring taps read neighbouring pixels), else one run of C per tap.
    const bool one_run = g.dil_w == 1;
    const int64_t runs = one_run ? 1 : g.kernel_w, run_length = one_run ? g.kernel_w * C : C;
    for (int64_t ki = tile.ki_lo; ki < tile.ki_hi; ++ki) {
      for (int64_t kj = 0; kj < runs; ++kj) {
        const int64_t offset = ki * c.tap_row_step + kj * g.dil_w * C;
        const float* px[P];
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) px[p] = base[p] + offset;
        const float* wk = w_block + (ki * g.kernel_w + kj) * C * V * kLanes;
        for (int64_t j = 0; j < run_length; ++j) {
          __m512 wv[V];
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(wk + (j * V + v) * kLanes);
          if (prefetch) {
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v)
              _mm_prefetch(reinterpret_cast<const char*>(wk + ((j + kPrefetchChannels) * V + v) * kLanes),
                           _MM_HINT_T0);
          }
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p) {
            const __m512 xv = _mm512_set1_ps(px[p][j]);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(xv, wv[v], acc[p][v]);
          }
        }
      }
    }
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        _mm512_mask_storeu_ps(dst[p] + v * kLanes, channel_mask(co0 + v * kLanes, g.out_channels), acc[p][v]);
  }
};

using ForwardTileFn = void (*)(const ForwardContext&, const float*, const float*, int64_t, const PixelTile&,
                               int64_t);

template <int V>
constexpr auto forward_tiles() {
  return tile_table<ForwardTileFn, ForwardTile, V>(std::make_integer_sequence<int, kForwardPixels[V - 1]>());
}

// [V - 1][P - 1] -> ForwardTile<P, V>::run.
const std::array<ForwardTileFn, kForwardPixels[0]> forward_tile_1 = forward_tiles<1>();
const std::array<ForwardTileFn, kForwardPixels[1]> forward_tile_2 = forward_tiles<2>();

ForwardTileFn forward_tile(int vectors, int64_t pixels) {
  return vectors == 1 ? forward_tile_1[pixels - 1] : forward_tile_2[pixels - 1];
}

// ---------------------------------------------------------------------------------------------
// Forward with at most 16 output channels, 3, 5 or 7 taps wide, stride and dilation 1 along rows
//
// With one vector of output channels, each broadcast input value feeds one FMA per tap in the
// tiles above: 13 loads per 12 FMAs, and the loads bound them at ~60% of the FMA peak. Along a row
// a stride-1 window of K taps reads each input value for K neighbouring outputs: broadcast once,
// it feeds all K (output p with tap kj reads column p + kj). From a row-planar padded copy
// ((Hp, C, Wp): one channel's columns consecutive), a tile of P outputs reads P + K - 1
// broadcasts and K weight vectors per input channel for K P FMAs, all at fixed offsets from one
// pointer.

constexpr int kRowTilePixels = 16;

// rows[i] (16 floats each, `stride` apart) -> their transpose into out[j * out_stride + i].
// (GCC 12's unpack intrinsics pass _mm512_undefined_ps() as their unused merge source, which its
// own -Wuninitialized then reports: a false positive, silenced for this function only.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
void transpose_16x16(const float* in, int64_t stride, float* out, int64_t out_stride) {
  // Interleave 32-bit elements of row pairs, then 64-bit pairs of those, then 128-bit quarters.
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * stride);
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4q + k] holds, in 128-bit quarter l, element 4l + k of rows 4q .. 4q + 3; gather quarter l of
  // the four r[4q + k] (q = 0..3) into output row 4l + k.
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const __m512 a = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88),
                 b = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
    const __m512 c = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88),
                 d = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    t[k] = _mm512_shuffle_f32x4(a, c, 0x88);       // quarter 0
    t[8 + k] = _mm512_shuffle_f32x4(a, c, 0xDD);   // quarter 2
    t[4 + k] = _mm512_shuffle_f32x4(b, d, 0x88);   // quarter 1
    t[12 + k] = _mm512_shuffle_f32x4(b, d, 0xDD);  // quarter 3
  }
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(out + j * out_stride, t[j]);
}
#pragma GCC diagnostic pop

// Sample x (H, W, C) -> its padded copy with each row planar: (Hp, C, Wp), zeros where the buffer
// was zero (PaddedSample::buffer). Blocks of 16 columns x 16 channels are transposed in registers.
const float* planar_rows_of(const float* x, float* dst, const PaddedSample& p, const Conv2dGeometry& g) {
  const int64_t C = p.channels, whole_c = C / kLanes * kLanes;
  for (int64_t r = p.row_lo; r < p.row_hi; ++r) {
    const float* src = x + ((r - g.pad_h) * g.in_w - g.pad_w) * C;  // padded column j at src + j * C
    float* row = dst + r * C * p.columns;
    int64_t j = p.column_lo;
    for (; j + kLanes <= p.column_hi; j += kLanes)
      for (int64_t c = 0; c < whole_c; c += kLanes)
        transpose_16x16(src + j * C + c, C, row + c * p.columns + j, p.columns);
    // What the blocks left: every channel of the columns past j, the channels past whole_c of the others.
    for (int64_t jj = p.column_lo; jj < p.column_hi; ++jj) {
      const int64_t c0 = jj < j ? whole_c : 0;
      for (int64_t c = c0; c < C; ++c) row[c * p.columns + jj] = src[jj * C + c];
    }
  }
  return dst;
}

// w (Cout, C, kh, K) -> (kh, C, K, 16), channels past Cout zero: one input channel's K tap vectors
// adjacent.
std::unique_ptr<float[]> pack_row_tile_weights(const float* w, const Conv2dGeometry& g) {
  const int64_t C = g.in_channels, KH = g.kernel_h, K = g.kernel_w;
  auto packed = zeroed(KH * C * K * kLanes);
  for (int64_t ki = 0; ki < KH; ++ki)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kj = 0; kj < K; ++kj)
        for (int64_t co = 0; co < g.out_channels; ++co)
          packed[((ki * C + c) * K + kj) * kLanes + co] = w[((co * C + c) * KH + ki) * K + kj];
  return packed;
}

// Output pixels [ow0, ow0 + P) of row (n, oh), all Cout channels, from the row-planar padded sample;
// a kernel K taps wide.
template <int P, int K>
struct RowTile {
  static void run(const ForwardContext& c, const float* planar, const float* packed_w, int64_t n, int64_t oh,
                  int64_t ow0, int64_t columns, std::pair<int64_t, int64_t> kernel_rows) {
    const Conv2dGeometry& g = c.g;
    const int64_t C = g.in_channels;
    const __m512 b = _mm512_loadu_ps(c.bias);
    __m512 acc[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[p] = b;
    for (int64_t ki = kernel_rows.first; ki < kernel_rows.second; ++ki) {
      const float* src = planar + (oh * g.stride_h + ki * g.dil_h) * C * columns + ow0;
      const float* wk = packed_w + ki * C * K * kLanes;
      for (int64_t ci = 0; ci < C; ++ci, src += columns, wk += K * kLanes) {
        __m512 wv[K];
#pragma GCC unroll 7
        for (int kj = 0; kj < K; ++kj) wv[kj] = _mm512_loadu_ps(wk + kj * kLanes);
#pragma GCC unroll 22
        for (int j = 0; j < P + K - 1; ++j) {  // input column ow0 + j serves outputs j - kj, kj < K
          const __m512 xv = _mm512_set1_ps(src[j]);
#pragma GCC unroll 7
          for (int kj = 0; kj < K; ++kj)
            if (j - kj >= 0 && j - kj < P) acc[j - kj] = _mm512_fmadd_ps(xv, wv[kj], acc[j - kj]);
        }
      }
    }
    const __mmask16 mask = channel_mask(0, g.out_channels);
    float* dst = c.out.data + n * c.out.sample + oh * c.out.row_step + ow0 * c.out.column_step;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) _mm512_mask_storeu_ps(dst + p * c.out.column_step, mask, acc[p]);
  }
};

using RowTileFn = void (*)(const ForwardContext&, const float*, const float*, int64_t, int64_t, int64_t,
                           int64_t, std::pair<int64_t, int64_t>);

template <int K>
constexpr auto row_tiles() {
  return tile_table<RowTileFn, RowTile, K>(std::make_integer_sequence<int, kRowTilePixels>());
}
// [P - 1] -> RowTile<P, K>::run, one table per kernel width.
const std::array<RowTileFn, kRowTilePixels> row_tiles_3 = row_tiles<3>();
const std::array<RowTileFn, kRowTilePixels> row_tiles_5 = row_tiles<5>();
const std::array<RowTileFn, kRowTilePixels> row_tiles_7 = row_tiles<7>();

RowTileFn row_tile(int64_t kernel_w, int64_t pixels) {
  switch (kernel_w) {
    case 3:
      return row_tiles_3[pixels - 1];
    case 5:
      return row_tiles_5[pixels - 1];
    default:
      return row_tiles_7[pixels - 1];
  }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient

struct WeightGradContext {
  const Conv2dGeometry& g;
  const PaddedSample& padded;
  int64_t padded_channels;  // Cout rounded up to whole vectors: the row length of a partial sum
};

// One register tile: input channels [ci0, ci0 + R) x output channels [co0, co0 + 16 V) of tap
// (ki, kj) (where a kernel row is one run: positions ci0 .. of that run, kj = 0), summed over every
// output pixel of `count` samples (padded inputs consecutive in `padded`, output gradients in
// `dy`) and added into `partial` ((kh, kw, C, padded_channels)).
template <int R, int V>
struct WeightGradTile {
  static void run(const WeightGradContext& c, const float* padded, const float* dy, int64_t count, int64_t ki,
                  int64_t kj, int64_t ci0, int64_t co0, float* partial) {
    const Conv2dGeometry& g = c.g;
    const int64_t C = g.in_channels, Cout = g.out_channels, x_step = g.stride_w * C;
    const int64_t x_row_step = g.stride_h * c.padded.columns * C;
    __mmask16 mask[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) mask[v] = channel_mask(co0 + v * kLanes, Cout);
    __m512 acc[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
    const float* xs = padded + (ki * g.dil_h * c.padded.columns + kj * g.dil_w) * C + ci0;
    const int64_t y_sample = g.out_pixels() * Cout;
    // Output rows whose input row for kernel row ki is padding add nothing: skipped.
    const auto [oh_lo, oh_hi] = tap_output_range(g.out_h, g.in_h, g.stride_h, g.pad_h, ki * g.dil_h);
    for (int64_t n = 0; n < count; ++n, xs += c.padded.size()) {
      for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
        const float* xp = xs + oh * x_row_step;
        const float* yp = dy + n * y_sample + oh * g.out_w * Cout + co0;
        for (int64_t ow = 0; ow < g.out_w; ++ow, xp += x_step, yp += Cout) {
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

using WeightGradTileFn = void (*)(const WeightGradContext&, const float*, const float*, int64_t, int64_t,
                                  int64_t, int64_t, int64_t, float*);

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

// Adds the sum over samples [n0, n1) of dy into sum (Cout), one output row at a time in float
// vectors (at most Wo values per float sum), the rows' sums in double.
void add_bias_grad(const Conv2dGeometry& g, const float* dy, int64_t n0, int64_t n1, double* sum) {
  const int64_t Cout = g.out_channels;
  alignas(64) float lanes[kLanes];
  for (int64_t row = n0 * g.out_h; row < n1 * g.out_h; ++row) {
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

// Samples per weight-gradient group: the group's padded inputs and output gradients in half of L2.
int64_t samples_per_group(const Conv2dGeometry& g, const PaddedSample& padded) {
  const int64_t sample_bytes = (padded.size() + g.out_pixels() * g.out_channels) * int64_t(sizeof(float));
  return std::max<int64_t>(1, cpu_l2_cache_bytes() / 2 / std::max<int64_t>(sample_bytes, 1));
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
  const PaddedSample padded(g);
  const bool rows = conv2d_channels_last_row_tiles_apply(g);
  const auto blocks = channel_blocks(g.out_channels, kMaxForwardVectors);
  // Each path packs the weights and lists its tiles its own way; only the one that runs does.
  const auto packed = rows ? pack_row_tile_weights(w, g) : pack_forward_weights(w, g, blocks);
  auto padded_bias = zeroed(ceil_div(g.out_channels, kLanes) * kLanes);
  if (bias != nullptr) std::copy(bias, bias + g.out_channels, padded_bias.get());
  const int64_t C = g.in_channels, taps = g.kernel_h * g.kernel_w, in_sample = g.in_h * g.in_w * C;
  const ForwardContext context{g,
                               padded_bias.get(),
                               out,
                               g.stride_h * padded.columns * C,
                               g.stride_w * C,
                               g.dil_h * padded.columns * C};
  // Sample n's padded input: the input itself, or its copy (row-planar for the row tiles).
  const auto pad = [&](int64_t n, float* buffer) {
    return rows ? planar_rows_of(x + n * in_sample, buffer, padded, g)
                : padded.of(x + n * in_sample, buffer, g);
  };
  // Tiles [tile_begin, tile_end) of sample n (of each channel block), from its padded input.
  static_assert(kForwardPixels[0] == kForwardPixels[1], "one tiling serves every channel block");
  const auto tiles = rows ? std::vector<PixelTile>() : pixel_tiles(g, kForwardPixels[0]);
  const auto sample = [&](const float* padded_x, int64_t n, int64_t tile_begin, int64_t tile_end) {
    if (rows) {
      int64_t tile = 0;
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        even_pieces(g.out_w, kRowTilePixels, [&](int64_t ow0, int64_t size) {
          if (tile >= tile_begin && tile < tile_end)
            row_tile(g.kernel_w, size)(context, padded_x, packed.get(), n, oh, ow0, padded.columns,
                                       kernel_rows_inside(g, oh));
          ++tile;
        });
      return;
    }
    for (const auto& block : blocks) {
      const float* w_block = packed.get() + block.first_channel * C * taps;
      for (int64_t t = tile_begin; t < std::min<int64_t>(tile_end, tiles.size()); ++t)
        forward_tile(block.vectors, tiles[t].size)(context, padded_x, w_block, n, tiles[t],
                                                   block.first_channel);
    }
  };
  if (g.batch >= at::get_num_threads()) {  // whole samples per thread
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const auto buffer = padded.buffer(1, rows);
      for (int64_t n = begin; n < end; ++n)
        sample(pad(n, buffer.get()), n, 0, std::numeric_limits<int64_t>::max());
    });
    return;
  }
  // Fewer samples than threads (small batches, inference): the threads split each sample's tiles.
  const auto buffer = padded.buffer(1, rows);
  const int64_t tile_count =
      rows ? g.out_h * ceil_div(g.out_w, int64_t{kRowTilePixels}) : static_cast<int64_t>(tiles.size());
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* padded_x = pad(n, buffer.get());
    at::parallel_for(0, tile_count, 1, [&](int64_t begin, int64_t end) { sample(padded_x, n, begin, end); });
  }
}

void conv2d_channels_last_weight_grad(const float* dy, const float* x, float* dw, float* dbias,
                                      const Conv2dGeometry& geometry) {
  const int64_t Cout = geometry.out_channels;
  const Conv2dGeometry g = flattened(geometry, {nullptr, 0, geometry.out_w * Cout, Cout});
  const PaddedSample padded(g);
  const int64_t C = g.in_channels, taps = g.kernel_h * g.kernel_w, in_sample = g.in_h * g.in_w * C;
  const int64_t out_sample = g.out_pixels() * Cout, padded_channels = ceil_div(Cout, kLanes) * kLanes;
  const int64_t group = samples_per_group(g, padded);
  const auto blocks = channel_blocks(Cout);
  const WeightGradContext context{g, padded, padded_channels};
  // The work of one group of samples: (block, ki, kj, input-channel tile) items, each a register
  // tile summed over the group; items [item_begin, item_end) of them.
  // With dil_w == 1 a kernel row's (kj, c) pairs are one run of kw * C consecutive floats, in x
  // and in the partial sums alike, cut into tiles as if it were kw * C channels of tap kj = 0: 3
  // input channels (a stem) make tiles of 9, not 3 (3 accumulators leave the FMAs waiting).
  struct Item {
    int vectors;
    int64_t co0, ki, kj, ci0, channels;
  };
  std::vector<Item> items;
  const bool one_run = g.dil_w == 1;
  for (const auto& block : blocks)
    for (int64_t ki = 0; ki < g.kernel_h; ++ki)
      for (int64_t kj = 0; kj < (one_run ? 1 : g.kernel_w); ++kj)
        even_pieces(one_run ? g.kernel_w * C : C, kGradChannels[block.vectors - 1],
                    [&](int64_t ci0, int64_t channels) {
                      items.push_back({block.vectors, block.first_channel, ki, kj, ci0, channels});
                    });
  const auto add_items = [&](const float* padded_x, int64_t n0, int64_t n1, int64_t item_begin,
                             int64_t item_end, float* sum) {
    for (int64_t i = item_begin; i < item_end; ++i) {
      const Item& it = items[i];
      weight_grad_tile(it.vectors, it.channels)(context, padded_x, dy + n0 * out_sample, n1 - n0, it.ki,
                                                it.kj, it.ci0, it.co0, sum);
    }
  };
  // Samples [n0, n1) as padded: the input itself where it has that shape, else copied into buffer.
  const auto pad_group = [&](float* buffer, int64_t n0, int64_t n1) -> const float* {
    if (padded.in_place) return x + n0 * in_sample;
    for (int64_t n = n0; n < n1; ++n) padded.of(x + n * in_sample, buffer + (n - n0) * padded.size(), g);
    return buffer;
  };
  const int64_t weight_size = dw != nullptr ? taps * C * padded_channels : 0;
  const int64_t item_count = dw != nullptr ? static_cast<int64_t>(items.size()) : 0;
  const int64_t threads = at::get_num_threads();
  std::vector<std::unique_ptr<float[]>> partial(threads);
  std::vector<std::vector<double>> partial_bias(threads);
  if (g.batch >= threads) {  // whole samples per thread, a partial sum per thread
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const int64_t t = at::get_thread_num();
      if (!partial[t]) partial[t] = zeroed(weight_size);
      if (dbias != nullptr && partial_bias[t].empty()) partial_bias[t].assign(Cout, 0.0);
      const auto buffer = padded.buffer(std::min(group, end - begin));
      for (int64_t n0 = begin; n0 < end; n0 += group) {
        const int64_t n1 = std::min(end, n0 + group);
        if (dbias != nullptr) add_bias_grad(g, dy, n0, n1, partial_bias[t].data());
        if (item_count > 0)
          add_items(pad_group(buffer.get(), n0, n1), n0, n1, 0, item_count, partial[t].get());
      }
    });
  } else {  // fewer samples than threads: the threads split the items (each owns its part of one sum)
    partial[0] = zeroed(weight_size);
    partial_bias[0].assign(dbias != nullptr ? Cout : 0, 0.0);
    const auto buffer = padded.buffer(std::min(group, g.batch));
    for (int64_t n0 = 0; n0 < g.batch; n0 += group) {
      const int64_t n1 = std::min(g.batch, n0 + group);
      if (dbias != nullptr) add_bias_grad(g, dy, n0, n1, partial_bias[0].data());
      const float* padded_x = pad_group(buffer.get(), n0, n1);
      at::parallel_for(0, item_count, 1, [&](int64_t begin, int64_t end) {
        add_items(padded_x, n0, n1, begin, end, partial[0].get());
      });
    }
  }
  if (dw != nullptr) {
    // (kh, kw, C, padded Cout) partial sums -> dw (Cout, C, kh, kw), threads added in order, the
    // input channels split across threads (for 256 x 256 channels a single-threaded scalar pass
    // took a fifth of the kernel's time).
    at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
      alignas(64) float lanes[kLanes];
      for (int64_t c = c_begin; c < c_end; ++c)
        for (int64_t t = 0; t < taps; ++t)
          for (int64_t co0 = 0; co0 < Cout; co0 += kLanes) {
            __m512 sum = _mm512_setzero_ps();
            for (const auto& part : partial)
              if (part)
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(part.get() + (t * C + c) * padded_channels + co0));
            _mm512_store_ps(lanes, sum);
            for (int64_t j = 0; j < kLanes && co0 + j < Cout; ++j)
              dw[((co0 + j) * C + c) * taps + t] = lanes[j];
          }
    });
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
