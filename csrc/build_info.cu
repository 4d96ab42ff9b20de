// Reports what nvcc compiled this extension for, read from nvcc's own macros so the answer is
// about this binary, not about the build script's intentions.
#include <cuda_runtime_api.h>

#include "build_info.h"

#define CNNEXT_STRINGIFY_(...) #__VA_ARGS__
#define CNNEXT_STRINGIFY(...) CNNEXT_STRINGIFY_(__VA_ARGS__)

namespace cnnext {

std::string cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return CNNEXT_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace cnnext
