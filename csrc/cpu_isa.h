// Which build of the CPU loops to run. The kernels with hand-vectorisable loops are compiled more
// than once, each build a translation unit for one level (cpu_isa_target.h says how): for the
// x86-64 baseline, for AVX2 (pooling; attention and conv2d's direct kernels with FMA) and for
// AVX-512 (pooling, attention, whose exp loop runs twice as wide there, and conv2d's channels_last
// kernels, which exist only there). cpu_isa() is the
// best level the CPU supports, decided once per process; CNNEXT_CPU_ISA=baseline|avx2|avx512
// lowers it (tests use that to cover every build), and asking for a level the CPU lacks, or an
// unknown name, is an error.
#pragma once

#include <string>

namespace cnnext {

enum class CpuIsa { baseline = 0, avx2 = 1, avx512 = 2 };  // avx2 includes FMA; avx512: F, BW, VL

CpuIsa cpu_isa();
CpuIsa cpu_isa_supported();            // the best level this CPU has, whatever CNNEXT_CPU_ISA says
const char* cpu_isa_name(CpuIsa isa);  // "baseline", "avx2" or "avx512", as CNNEXT_CPU_ISA spells them
// The level cpu_isa_name(level) names; another name raises, naming `what` (the setting it came from).
CpuIsa cpu_isa_from_name(const std::string& name, const char* what);
inline bool cpu_use_avx2() { return cpu_isa() >= CpuIsa::avx2; }
inline bool cpu_use_avx512() { return cpu_isa() >= CpuIsa::avx512; }

}  // namespace cnnext
