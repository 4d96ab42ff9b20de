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
  const CpuIsa wanted = cpu_isa_from_name(forced, "CNNEXT_CPU_ISA");
  TORCH_CHECK(wanted <= supported, "CNNEXT_CPU_ISA=", forced,
              " asks for instructions this CPU lacks (it supports up to ", cpu_isa_name(supported), ")");
  return wanted;
}

}  // namespace

CpuIsa cpu_isa_from_name(const std::string& name, const char* what) {
  if (name == "avx512") return CpuIsa::avx512;
  if (name == "avx2") return CpuIsa::avx2;
  TORCH_CHECK(name == "baseline", what, " must be baseline, avx2 or avx512, got '", name, "'");
  return CpuIsa::baseline;
}

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
