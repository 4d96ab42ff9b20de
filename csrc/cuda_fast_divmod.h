// Division by a divisor fixed at launch, without a division instruction: the kernels' index
// arithmetic (a pixel index into (n, oh, ow), a GEMM depth index into (c, ki, kj)) divides by the
// same few sizes millions of times, and a 64-bit `/` or `%` on a GPU is a called subroutine of
// dozens of instructions. FastDivmod precomputes, on the host, a 32-bit multiplier m and shift s
// such that  n / d = (umulhi(n, m) + n) >> s  for every 0 <= n < 2^31 (Granlund and Montgomery,
// "Division by invariant integers using multiplication", 1994, with l = ceil(log2 d),
// m = floor(2^32 (2^l - d) / d) + 1; n < 2^31 keeps umulhi(n, m) + n below 2^32). So a quotient
// and remainder cost one multiply-high, one add, one shift and one multiply-subtract.
//
// The kernels that use it check at launch that every index they divide fits (kMaxDividend).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "cuda_device.h"

namespace cnnext::cuda {

// Dividends must be below this (they are int32 indices that passed the launch checks).
inline constexpr int64_t kMaxDividend = (int64_t{1} << 31) - 1;

struct DivMod {
  int quotient, remainder;
};

class FastDivmod {
 public:
  FastDivmod() = default;
  explicit FastDivmod(int64_t divisor) : divisor_(static_cast<uint32_t>(divisor)) {
    TORCH_CHECK(divisor >= 1 && divisor <= kMaxDividend, "FastDivmod: divisor ", divisor,
                " out of [1, 2^31)");
    while ((uint64_t{1} << shift_) < divisor_) ++shift_;
    multiplier_ =
        static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift_) - divisor_)) / divisor_ + 1);
  }

  // Division by a tensor size that may be 0: an empty size divides nothing (kernels launch no
  // thread for it), and 1 keeps the divider valid.
  static FastDivmod of_size(int64_t size) { return FastDivmod(size < 1 ? 1 : size); }

  __host__ __device__ __forceinline__ int divisor() const { return static_cast<int>(divisor_); }

  // n / divisor for 0 <= n < 2^31.
  __host__ __device__ __forceinline__ int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
    return static_cast<int>((mulhi(u, multiplier_) + u) >> shift_);
  }

  __host__ __device__ __forceinline__ DivMod divmod(int n) const {
    const int q = div(n);
    return {q, n - q * static_cast<int>(divisor_)};
  }

 private:
  __host__ __device__ __forceinline__ static uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return static_cast<uint32_t>((uint64_t{a} * b) >> 32);
#endif
  }

  uint32_t divisor_ = 1, multiplier_ = 1, shift_ = 0;
};

}  // namespace cnnext::cuda
