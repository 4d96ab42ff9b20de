// Tensor-core instructions for cnnext's CUDA kernels, one function per instruction: inline PTX on a
// GPU (sm_80 and newer), and under the CUDA emulator (CNNEXT_CUDA_EMULATION) the same operation
// computed from the warp's fragments, exchanged through a per-warp area between two __syncwarp. So
// a kernel that uses tensor cores runs, fragment layout included, on the emulator in CI.
//
// mma_m16n8k16<T>(d, a, b, c): the warp computes D = A * B + C with A 16x16 (row-major), B 16x8
// (column-major), C and D 16x8 in float; T = c10::Half or c10::BFloat16 (PTX mma.sync.aligned
// .m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32). Every lane of the warp must call it (it is a
// warp collective, like __shfl_sync with a full mask). Fragments, per lane: g = lane / 4,
// t = lane % 4; a uint32_t holds two 16-bit elements, the one with the lower column (A) or row (B)
// in its low 16 bits (pack_pair):
//   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]    a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = C[g][2t], C[g][2t+1]      c[2], c[3] = C[g+8][2t], C[g+8][2t+1]      (d alike)
// The emulated sum runs over k in order in float; the hardware's order is unspecified, so results
// may differ in the last bits of float (products of two 16-bit values are exact in float either way).
//
// mma_m16n8k8_tf32(d, a, b, c): the same for float32 data as TF32 (PTX mma.sync.aligned.m16n8k8
// .row.col.f32.tf32.tf32.f32): A 16x8, B 8x8, one element per register, each already rounded to
// TF32 by to_tf32 (10 mantissa bits, round to nearest with ties away from zero: cvt.rna.tf32.f32).
//   a[0] = A[g][t]   a[1] = A[g+8][t]   a[2] = A[g][t+4]   a[3] = A[g+8][t+4]
//   b[0] = B[t][g]   b[1] = B[t+4][g]          c and d as for mma_m16n8k16
// Products of two TF32 values are exact in float, so here too only the order of the sum is free.
#pragma once

#include <ATen/Context.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "cuda_device.h"

#ifndef CNNEXT_CUDA_EMULATION
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>
#endif

namespace cnnext::cuda {

// Whether kernels take their tensor-core variant for half / bfloat16: on a GPU of compute
// capability 8.0 or newer, and always under the emulator, unless CNNEXT_CUDA_TENSOR_CORES=0 (the
// FMA variants, for comparison and for their tests). Read at every launch (a getenv).
inline bool tensor_cores_enabled() {
  const char* setting = std::getenv("CNNEXT_CUDA_TENSOR_CORES");
  if (setting != nullptr && std::string_view(setting) == "0") return false;
#ifdef CNNEXT_CUDA_EMULATION
  return true;
#else
  int major = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c10::cuda::current_device()));
  return major >= 8;
#endif
}

// Whether float32 kernels take their TF32 tensor-core variant: exactly when native convolutions
// may (torch.backends.cudnn.allow_tf32, PyTorch's default True, read at every launch) and tensor
// cores are enabled as above.
inline bool tf32_enabled() { return at::globalContext().allowTF32CuDNN() && tensor_cores_enabled(); }

template <typename T>
inline constexpr bool kTensorCoreType = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Two 16-bit values in one 32-bit register: `low` in bits 0-15 (the lower column or row index).
__device__ __forceinline__ uint32_t pack_pair(uint16_t low, uint16_t high) {
  return static_cast<uint32_t>(low) | (static_cast<uint32_t>(high) << 16);
}
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(T low, T high) {
  static_assert(kTensorCoreType<T>, "tensor-core fragments hold half or bfloat16");
  return pack_pair(low.x, high.x);
}

// The two consecutive 16-bit values at p (4-byte aligned) as one fragment register, p[0] low: one
// 32-bit shared-memory load on a GPU (the emulator copies the bytes: no type punning in C++).
__device__ __forceinline__ uint32_t load_pair(const uint16_t* p) {
#ifdef CNNEXT_CUDA_EMULATION
  uint32_t pair;
  std::memcpy(&pair, p, sizeof pair);
  return pair;
#else
  return *reinterpret_cast<const uint32_t*>(p);
#endif
}

template <typename T>
__device__ __forceinline__ float unpack(uint32_t pair, int which) {
  T value;
  value.x = static_cast<uint16_t>(which == 0 ? pair & 0xffffu : pair >> 16);
  return static_cast<float>(value);
}

#ifdef CNNEXT_CUDA_EMULATION

// float -> TF32 as cvt.rna.tf32.f32 does it, returned as float bits with the low 13 mantissa bits
// zero: round the magnitude to nearest, ties away from zero; infinities and NaN unchanged.
__device__ inline uint32_t to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  return bits;
}

__device__ inline float tf32_value(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// The emulated instructions meet the warp's fragments in one exchange area per warp of the running
// block (like __shared__ memory: static thread_local, plain integers): every lane publishes its A
// and B registers, __syncwarp, reads the ones it needs, __syncwarp again before the area can be
// overwritten. Two warp collectives per mma, where gathering by __shfl_sync took 32 or more.
struct WarpFragments {
  uint32_t a[32][4], b[32][2];
};

inline int emulated_lane() {
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32);
}

inline const WarpFragments& publish_fragments(const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static thread_local WarpFragments per_warp[32];  // a block holds at most 32 warps
  const int thread = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  WarpFragments& area = per_warp[thread / 32];
  for (int r = 0; r < 4; ++r) area.a[thread % 32][r] = a[r];
  for (int r = 0; r < 2; ++r) area.b[thread % 32][r] = b[r];
  __syncwarp();
  return area;
}

__device__ inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                        const float (&c)[4]) {
  const int lane = emulated_lane(), g = lane / 4, t = lane % 4;
  const WarpFragments& x = publish_fragments(a, b);
  // A[row][k]: lane 4 (row % 8) + k % 4, register (row >= 8) + 2 (k >= 4); B[k][n]: lane 4 n + k % 4,
  // register (k >= 4).
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float sum = c[i];
    for (int k = 0; k < 8; ++k) {
      const float av = tf32_value(x.a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]);
      sum += av * tf32_value(x.b[4 * col + k % 4][k / 4]);
    }
    d[i] = sum;
  }
  __syncwarp();
}

template <typename T>
__device__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                             const float (&c)[4]) {
  static_assert(kTensorCoreType<T>, "mma_m16n8k16 multiplies half or bfloat16");
  const int lane = emulated_lane(), g = lane / 4, t = lane % 4;
  const WarpFragments& x = publish_fragments(a, b);
  // A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2;
  // B[k][n]: lane 4 n + (k % 8) / 2, register (k >= 8), half k % 2.
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float sum = c[i];
    for (int k = 0; k < 16; ++k) {
      const float av = unpack<T>(x.a[4 * (row % 8) + (k % 8) / 2][row / 8 + 2 * (k / 8)], k % 2);
      sum += av * unpack<T>(x.b[4 * col + (k % 8) / 2][k / 8], k % 2);
    }
    d[i] = sum;
  }
  __syncwarp();
}

#else

__device__ __forceinline__ uint32_t to_tf32(float value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(value));
  return bits;
#else
  __trap();
  return 0;
#endif
}

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // built for an architecture before sm_80: callers choose another path there
#endif
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(kTensorCoreType<T>, "mma_m16n8k16 multiplies half or bfloat16");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#else
  __trap();  // built for an architecture before sm_80: callers choose another path there
#endif
}

#endif

}  // namespace cnnext::cuda
