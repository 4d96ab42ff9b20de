// Reductions over contiguous arrays written with independent partial results (8 lanes), so that
// the compiler vectorises them: a single running sum or maximum is a serial dependency it may
// not reorder. Used by the CPU pooling and attention loops (both of their ISA builds).
#pragma once

#include <cstdint>

namespace cnnext {

template <typename acc_t, typename scalar_t>
inline acc_t sum_lanes(const scalar_t* p, int64_t n) {
  constexpr int kLanes = 8;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += p[i + j];
  acc_t sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  for (; i < n; ++i) sum += p[i];
  return sum;
}

// Maximum of p[0..n) and `init` (NaN in p is ignored, as with a `>` comparison).
template <typename scalar_t>
inline scalar_t max_lanes(const scalar_t* p, int64_t n, scalar_t init) {
  constexpr int kLanes = 8;
  scalar_t lanes[kLanes];
  for (int j = 0; j < kLanes; ++j) lanes[j] = init;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] = p[i + j] > lanes[j] ? p[i + j] : lanes[j];
  scalar_t result = init;
  for (int j = 0; j < kLanes; ++j) result = lanes[j] > result ? lanes[j] : result;
  for (; i < n; ++i) result = p[i] > result ? p[i] : result;
  return result;
}

}  // namespace cnnext
