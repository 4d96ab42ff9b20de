// The CPU attention loops compiled for AVX-512 (F, BW, VL) + FMA: the exp and softmax loops run
// 16 floats wide, half the instructions of the AVX2 build for the same row. Built like
// attention_cpu_avx2.cpp: headers first, then the target pragma, so only the loops (internal
// linkage) take the wider instructions.
#if defined(__x86_64__)
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#include "attention/attention_cpu_loops_table.h"
#include "common.h"
#include "cpu_reduce.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#define CNNEXT_ATTENTION_LOOPS_FACTORY attention_cpu_loops_avx512
#define CNNEXT_LOOPS_AVX512  // exp16 by AVX-512 intrinsics
#include "attention/attention_cpu_loops.h"
#endif
