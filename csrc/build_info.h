// What the CUDA half of the extension was compiled for; defined in build_info.cu (CUDA builds only).
#pragma once

#include <string>

namespace cnnext {
std::string cuda_arch_list();  // e.g. "800,900", from nvcc's __CUDA_ARCH_LIST__
int cuda_runtime_version();    // CUDART_VERSION the kernels were compiled against, e.g. 13000
}  // namespace cnnext
