// The CUDA execution model on the CPU, for testing cnnext's CUDA kernels without a GPU.
//
// With this header (reached through cuda_device.h when CNNEXT_CUDA_EMULATION is defined) the
// project's .cu files compile as plain C++ with g++, kernel bodies unchanged: __global__ and
// friends become ordinary functions, threadIdx/blockIdx/blockDim/gridDim read the state of the
// emulated thread now running, and __syncthreads, the warp intrinsics and atomics call into the
// runtime (runtime.cpp). A launch runs the grid block after block on the calling OS thread; every
// CUDA thread of a block is a fiber (its own stack) that runs until its next barrier, warp
// synchronisation or exit, in the order the schedule picks (CNNEXT_EMU_SCHEDULE).
//
// What is emulated: grid/block/thread indices and dims; static __shared__ memory (one object per
// OS thread, kept between blocks: NOT re-initialised) and dynamic shared memory
// (cnnext::cuda::dynamic_shared_memory<T>(), filled with NaN bytes 0xFF before every block);
// __syncthreads(_count/_and/_or); __syncwarp, __shfl(_up/_down/_xor)_sync, __ballot_sync,
// __any_sync, __all_sync, __activemask with warp size 32 and their masks checked; atomics; the
// driver's launch checks. What is not: timing, the GPU's weak memory model (a fiber's writes are
// visible to all others at once), register and local-memory limits, races between blocks (blocks
// never overlap), and texture / tensor-core hardware (only what cnnext's device layer wraps).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#if !defined(__x86_64__)
#error "cnnext's CUDA emulator switches fibers with x86-64 assembly (runtime.cpp); no other port exists"
#endif

// ---- Keywords ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// Static shared memory: one object per function and OS thread. Blocks run one after another on
// the launching thread, so all fibers of a block see the same object, as the threads of a block do.
#define __shared__ static thread_local
#define __constant__ static

// ---- Built-in vector types and variables --------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
using cudaStream_t = struct CnnextEmulatedStream*;  // never dereferenced

namespace cnnext_emu {

constexpr int kWarpSize = 32;

// What the kernel code of the emulated thread now running can read.
struct ThreadView {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
extern thread_local const ThreadView* current_view;

// A source position, for error messages that say which barrier or intrinsic was involved.
struct Site {
  const char* file;
  int line;
};

// ---- Runtime entry points (runtime.cpp) ----------------------------------------------------------
// Block barrier; returns the count / and / or of `predicate` over the block's threads.
enum class BarrierReduce { kNone, kCount, kAnd, kOr };
int block_barrier(Site site, BarrierReduce reduce, int predicate);

// Warp collectives. `value` carries up to 8 bytes of the lane's operand; the result is the lane's
// share (shuffles: the source lane's bytes; ballot/any/all: the mask or flag).
enum class WarpOp { kSync, kShuffleIndex, kShuffleUp, kShuffleDown, kShuffleXor, kBallot, kAny, kAll };
uint64_t warp_collective(Site site, WarpOp op, unsigned mask, uint64_t value, int lane_arg, int width);
unsigned active_mask();
[[noreturn]] void trap(Site site, const char* what);

// Dynamic shared memory of the running block, and its size in bytes.
unsigned char* dynamic_shared_base();
size_t dynamic_shared_size();

// One kernel launch: the body runs once per emulated thread. `kernel` identifies the kernel for
// the opt-in shared-memory attribute; `name` is used in error messages.
struct LaunchRequest {
  const char* name;
  const void* kernel;
  dim3 grid, block;
  size_t dynamic_shared_bytes;
};
void launch(const LaunchRequest& request, const std::function<void()>& body);
void set_max_dynamic_shared(const void* kernel, const char* name, size_t bytes);
int multiprocessor_count();

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace cnnext_emu

#define threadIdx (::cnnext_emu::current_view->thread_idx)
#define blockIdx (::cnnext_emu::current_view->block_idx)
#define blockDim (::cnnext_emu::current_view->block_dim)
#define gridDim (::cnnext_emu::current_view->grid_dim)
#define warpSize (::cnnext_emu::kWarpSize)

#define CNNEXT_EMU_SITE (::cnnext_emu::Site{__FILE__, __LINE__})

// ---- Barriers ------------------------------------------------------------------------------------
#define __syncthreads() \
  ((void)::cnnext_emu::block_barrier(CNNEXT_EMU_SITE, ::cnnext_emu::BarrierReduce::kNone, 0))
#define __syncthreads_count(p) \
  ::cnnext_emu::block_barrier(CNNEXT_EMU_SITE, ::cnnext_emu::BarrierReduce::kCount, (p) ? 1 : 0)
#define __syncthreads_and(p) \
  ::cnnext_emu::block_barrier(CNNEXT_EMU_SITE, ::cnnext_emu::BarrierReduce::kAnd, (p) ? 1 : 0)
#define __syncthreads_or(p) \
  ::cnnext_emu::block_barrier(CNNEXT_EMU_SITE, ::cnnext_emu::BarrierReduce::kOr, (p) ? 1 : 0)
#define __trap() ::cnnext_emu::trap(CNNEXT_EMU_SITE, "__trap()")

// ---- Warp intrinsics -----------------------------------------------------------------------------
// Macros only to record the call site; the work is in the templates below.
#define __syncwarp(...) ::cnnext_emu::syncwarp(CNNEXT_EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) \
  ::cnnext_emu::shuffle(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kShuffleIndex, __VA_ARGS__)
#define __shfl_up_sync(...) \
  ::cnnext_emu::shuffle(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kShuffleUp, __VA_ARGS__)
#define __shfl_down_sync(...) \
  ::cnnext_emu::shuffle(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kShuffleDown, __VA_ARGS__)
#define __shfl_xor_sync(...) \
  ::cnnext_emu::shuffle(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kShuffleXor, __VA_ARGS__)
#define __ballot_sync(mask, p)                                                                        \
  static_cast<unsigned>(::cnnext_emu::warp_collective(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kBallot, \
                                                      (mask), (p) ? 1 : 0, 0, 32))
#define __any_sync(mask, p)                                                                           \
  static_cast<int>(::cnnext_emu::warp_collective(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kAny, (mask), \
                                                 (p) ? 1 : 0, 0, 32))
#define __all_sync(mask, p)                                                                           \
  static_cast<int>(::cnnext_emu::warp_collective(CNNEXT_EMU_SITE, ::cnnext_emu::WarpOp::kAll, (mask), \
                                                 (p) ? 1 : 0, 0, 32))
#define __activemask() ::cnnext_emu::active_mask()

namespace cnnext_emu {

inline void syncwarp(Site site, unsigned mask = 0xffffffffu) {
  warp_collective(site, WarpOp::kSync, mask, 0, 0, kWarpSize);
}

template <typename T>
T shuffle(Site site, WarpOp op, unsigned mask, T value, int lane_arg, int width = kWarpSize) {
  return from_bits<T>(warp_collective(site, op, mask, to_bits(value), lane_arg, width));
}

// ---- Atomics -------------------------------------------------------------------------------------
// Fibers never preempt each other, so any read-modify-write is atomic here; the __atomic builtins
// are used anyway so that ThreadSanitizer sees atomic accesses, not races.
template <typename T>
T atomic_update(T* address, T (*update)(T, T), T operand) {
  if constexpr (std::is_integral_v<T>) {
    T old = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(address, &old, update(old, operand), false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
    return old;
  } else {
    using Bits =
        std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
    static_assert(sizeof(T) == sizeof(Bits), "atomics on 2-, 4- or 8-byte values");
    auto* bits = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(bits, __ATOMIC_RELAXED);
    while (true) {
      T old;
      std::memcpy(&old, &old_bits, sizeof(T));
      const T updated = update(old, operand);
      Bits new_bits;
      std::memcpy(&new_bits, &updated, sizeof(T));
      if (__atomic_compare_exchange_n(bits, &old_bits, new_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        return old;
      }
    }
  }
}

}  // namespace cnnext_emu

template <typename T>
T atomicAdd(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return static_cast<T>(a + b); }, value);
}
template <typename T>
T atomicSub(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return static_cast<T>(a - b); }, value);
}
template <typename T>
T atomicMax(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return a < b ? b : a; }, value);
}
template <typename T>
T atomicMin(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return b < a ? b : a; }, value);
}
template <typename T>
T atomicExch(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T, T b) { return b; }, value);
}
template <typename T>
T atomicAnd(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return static_cast<T>(a & b); }, value);
}
template <typename T>
T atomicOr(T* address, T value) {
  return ::cnnext_emu::atomic_update<T>(address, [](T a, T b) { return static_cast<T>(a | b); }, value);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  static_assert(std::is_integral_v<T>, "atomicCAS on integers");
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value, whether or not it matched
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- Device math with host equivalents -----------------------------------------------------------
// CUDA declares the math functions in the global namespace for every floating-point type.
using std::exp;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
// CUDA's device min/max accept mixed integer widths; std::min does not.
template <typename A, typename B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
inline float __expf(float x) { return std::exp(x); }
inline float __exp2f(float x) { return std::exp2(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return std::isnan(x) ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
