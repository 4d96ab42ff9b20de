// The device layer of cnnext's CUDA sources: everything a .cu file needs from the CUDA runtime
// goes through here, so that the same file compiles with nvcc for a GPU and with g++ for the CUDA
// emulator (CNNEXT_CUDA_EMULATION, csrc/cuda_emulation/), where the kernels run on the CPU.
//
//   kDeviceType                 the device type of the tensors the kernels take (CUDA; CPU emulated)
//   DeviceGuard(device)         makes `device` current for the scope (c10::cuda::CUDAGuard)
//   multiprocessor_count()      SMs of the current device (the emulator's setting when emulated)
//   acc_t<scalar_t>             accumulation type: float for half/bfloat16/float, double for double
//   dynamic_shared_memory<T>()  the block's dynamic shared memory (extern __shared__), as T*
//   empty(sizes, options)       at::empty for a kernel's output; emulated, filled with 0xFF bytes
//                               (NaN in every floating type) so that an element no thread writes shows
//   launch<kernel>(config, args...)          kernel<<<grid, block, shared bytes, current stream>>>
//                                             with the launch-error check
//   allow_dynamic_shared<kernel>(bytes)      the opt-in for more than 48 KiB of dynamic shared memory
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstddef>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#ifdef CNNEXT_CUDA_EMULATION
#include "cuda_emulation/emulator.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace cnnext::cuda {

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes = 0;  // dynamic shared memory per block
};

#ifdef CNNEXT_CUDA_EMULATION

inline constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

inline int multiprocessor_count() { return ::cnnext_emu::multiprocessor_count(); }

// A GPU's fresh memory holds whatever was there; the emulator makes that NaN, never a plausible value.
inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto t = at::empty(sizes, options);
  if (t.nbytes() > 0) std::memset(t.data_ptr(), 0xff, t.nbytes());
  return t;
}

template <typename T>
T* dynamic_shared_memory() {
  return reinterpret_cast<T*>(::cnnext_emu::dynamic_shared_base());
}

template <auto kernel>
const char* kernel_name() {
  return __PRETTY_FUNCTION__;  // "... [with auto kernel = <the kernel and its template arguments>]"
}

template <typename Kernel>
struct KernelParams;
template <typename... Params>
struct KernelParams<void (*)(Params...)> {
  using type = std::tuple<std::decay_t<Params>...>;
};

template <auto kernel, typename... Args>
void launch(const LaunchConfig& config, Args&&... args) {
  // The arguments converted once to the kernel's parameter types, as a launch copies them; each
  // emulated thread's call then takes its own by-value copies.
  const typename KernelParams<decltype(kernel)>::type params(std::forward<Args>(args)...);
  const std::function<void()> body = [&params] { std::apply(kernel, params); };
  ::cnnext_emu::launch({kernel_name<kernel>(), reinterpret_cast<const void*>(kernel), config.grid,
                        config.block, config.shared_bytes},
                       body);
}

template <auto kernel>
void allow_dynamic_shared(size_t bytes) {
  ::cnnext_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), kernel_name<kernel>(), bytes);
}

#else  // nvcc

inline constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;

struct DeviceGuard {
  explicit DeviceGuard(c10::Device device) : guard(device) {}
  c10::cuda::CUDAGuard guard;
};

inline int multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char cnnext_dynamic_shared[];
  return reinterpret_cast<T*>(cnnext_dynamic_shared);
}

template <auto kernel, typename... Args>
void launch(const LaunchConfig& config, Args&&... args) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // clang-format reads a .h file as C++ and would split the launch chevrons.
  // clang-format off
  kernel<<<config.grid, config.block, config.shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <auto kernel>
void allow_dynamic_shared(size_t bytes) {
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

#endif

}  // namespace cnnext::cuda
