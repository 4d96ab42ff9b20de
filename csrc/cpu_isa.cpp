#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace cnnext {
namespace {

CpuIsa detect_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  return avx512 ? CpuIsa::avx512 : avx2 ? CpuIsa::avx2 : CpuIsa::baseline;
#else
  return CpuIsa::baseline;
#endif
}

CpuIsa chosen_isa() {
  const CpuIsa supported = cpu_isa_supported();
  const char* forced = std::getenv("CNNEXT_CPU_ISA");
  if (forced == nullptr || *forced == '\0') return supported;
  const std::string name(forced);
  CpuIsa wanted = CpuIsa::baseline;
  if (name == "avx512") {
    wanted = CpuIsa::avx512;
  } else if (name == "avx2") {
    wanted = CpuIsa::avx2;
  } else {
    TORCH_CHECK(name == "baseline", "CNNEXT_CPU_ISA must be baseline, avx2 or avx512, got '", name, "'");
  }
  TORCH_CHECK(wanted <= supported, "CNNEXT_CPU_ISA=", name,
              " asks for instructions this CPU lacks (it supports up to ", cpu_isa_name(supported), ")");
  return wanted;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512:
      return "avx512";
    case CpuIsa::avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

CpuIsa cpu_isa_supported() {
  static const CpuIsa isa = detect_isa();
  return isa;
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = chosen_isa();
  return isa;
}

}  // namespace cnnext
