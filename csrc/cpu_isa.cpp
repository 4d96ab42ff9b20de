#include "cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace cnnext {

bool cpu_use_avx2() {
  static const bool use = [] {
#if defined(__x86_64__)
    const char* forced = std::getenv("CNNEXT_CPU_ISA");
    const bool baseline_forced = forced != nullptr && std::strcmp(forced, "baseline") == 0;
    return !baseline_forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return use;
}

}  // namespace cnnext
