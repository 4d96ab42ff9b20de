// The one way CPU code gets builds for wider instruction sets: a translation unit compiled for one
// level of cpu_isa.h (which picks among the builds at run time).
//
// A file built for a level defines CNNEXT_TARGET_ISA before its first include, as one of the levels
// below, then includes every header it needs, and this header LAST. Everything after it is
// compiled for that level; a header included after it would have its inline functions (ATen's,
// the standard library's) compiled for the level too, and the linker may keep that copy for the
// whole program, which then crashes on a CPU without those instructions. So the code after this
// header must have internal linkage except the build's entry points, named with
// CNNEXT_ISA_NAME(name) (name_baseline, name_avx2, ...), which callers reach only where
// cpu_isa() allows.
//
//   CNNEXT_ISA_BASELINE   the compiler's default (x86-64: SSE2)
//   CNNEXT_ISA_AVX2       AVX2 without FMA contraction: results round as in the baseline build
//   CNNEXT_ISA_AVX2_FMA   AVX2 + FMA
//   CNNEXT_ISA_AVX512     AVX-512 F/BW/VL + AVX2 + FMA
#ifdef CNNEXT_CPU_ISA_TARGET_H
#error "cpu_isa_target.h included twice: a translation unit is built for one level"
#endif
#define CNNEXT_CPU_ISA_TARGET_H

#define CNNEXT_ISA_BASELINE 0
#define CNNEXT_ISA_AVX2 1
#define CNNEXT_ISA_AVX2_FMA 2
#define CNNEXT_ISA_AVX512 3

#ifndef CNNEXT_TARGET_ISA
#error "define CNNEXT_TARGET_ISA (one of the CNNEXT_ISA_* levels) before including cpu_isa_target.h"
#endif

#if CNNEXT_TARGET_ISA == CNNEXT_ISA_BASELINE
#define CNNEXT_ISA_NAME(name) name##_baseline
#elif !defined(__x86_64__)
#error "the AVX2 and AVX-512 builds are for x86-64 only"
#elif CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX2
#pragma GCC target("avx2")
#define CNNEXT_ISA_NAME(name) name##_avx2
#elif CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX2_FMA
#pragma GCC target("avx2,fma")
#define CNNEXT_ISA_NAME(name) name##_avx2
#elif CNNEXT_TARGET_ISA == CNNEXT_ISA_AVX512
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#define CNNEXT_ISA_NAME(name) name##_avx512
#else
#error "unknown CNNEXT_TARGET_ISA"
#endif
