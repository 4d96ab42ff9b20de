// Shared helpers for every cnnext operator: boundary checks that name the argument and say what
// was expected and what was got, small integer helpers, and the dtype dispatch lists.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <string>
#include <utility>

namespace cnnext {

// ceil(a / b) for a >= 0, b > 0 (host and device).
C10_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// a + b and a * b for sizes derived from user arguments (padded extents, dilated kernels): an
// error naming the op and the quantity instead of a silent 64-bit wrap-around.
inline int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t result = 0;
  TORCH_CHECK(!c10::add_overflows(a, b, &result), op, ": ", what, " overflows 64-bit integers (", a, " + ", b,
              "); the arguments are too large");
  return result;
}
inline int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t result = 0;
  TORCH_CHECK(!c10::mul_overflows(a, b, &result), op, ": ", what, " overflows 64-bit integers (", a, " * ", b,
              "); the arguments are too large");
  return result;
}

// The extent of a dilated window: dilation * (kernel - 1) + 1, checked.
inline int64_t window_extent(const char* op, int64_t kernel, int64_t dilation) {
  return checked_add(op, "the dilated kernel size",
                     checked_mul(op, "the dilated kernel size", dilation, kernel - 1), 1);
}

// For a sliding window tap at input position o * stride - pad + offset (offset = tap * dilation):
// the outputs [lo, hi) of [0, out_size) for which that position lies inside the input [0, size).
inline std::pair<int64_t, int64_t> tap_output_range(int64_t out_size, int64_t size, int64_t stride,
                                                    int64_t pad, int64_t offset) {
  const int64_t shift = pad - offset;  // input position = o * stride - shift
  const int64_t lo = std::min(shift > 0 ? ceil_div(shift, stride) : 0, out_size);
  const int64_t last = size - 1 + shift;  // o * stride <= last
  const int64_t hi = last < 0 ? 0 : last / stride + 1;
  return {lo, std::clamp(hi, lo, out_size)};
}

// Strides of a 4-D (N, C, H, W) tensor in elements, whatever its layout (NCHW, channels_last or a
// strided view); kernels address elements through it instead of assuming one layout.
struct Strides4 {
  int64_t n, c, h, w;
  C10_HOST_DEVICE int64_t offset(int64_t n_, int64_t c_, int64_t h_, int64_t w_) const {
    return n_ * n + c_ * c + h_ * h + w_ * w;
  }
};
inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// One requirement per check; every message names the argument.
inline void check_ndim(const at::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, name, " must be a ", ndim, "-D tensor, got ", t.dim(), "-D with shape ",
              t.sizes());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "expected ", b_name, " to have the dtype of ", a_name, " (",
              a.scalar_type(), "), got ", b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), "expected ", b_name, " to be on the device of ", a_name, " (",
              a.device(), "), got ", b.device());
}

inline void check_device_type(const at::Tensor& t, const char* name, c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, name, " must be a ", c10::DeviceTypeName(type), " tensor, got ",
              t.device());
}

// An int[2] schema argument: exactly two entries, each satisfying `min_value`.
inline void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, name, " must have 2 entries (height, width), got ", v.size());
  for (const auto x : v) {
    TORCH_CHECK(x >= min_value, name, " must be >= ", min_value, ", got ", v);
  }
}

}  // namespace cnnext

// Dtypes per device: float32/float64 everywhere (float64 makes gradcheck possible), half and
// bfloat16 on CUDA with float32 accumulation.
#define CNNEXT_DISPATCH_CPU_TYPES(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, __VA_ARGS__)
#define CNNEXT_DISPATCH_CUDA_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
