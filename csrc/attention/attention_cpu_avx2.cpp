// The CPU attention loops compiled for AVX2 + FMA: the vectorised exp and softmax loops run 8 floats
// wide instead of 4. Headers come before the target pragma, so only the loops in
// attention_cpu_loops.h (internal linkage) are built for AVX2 (see pool2d_cpu_avx2.cpp).
#if defined(__x86_64__)
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention_cpu_loops_table.h"
#include "common.h"
#include "cpu_reduce.h"

#pragma GCC target("avx2,fma")  // FMA: the exp polynomial's multiply-adds fuse (half its latency)
#define CNNEXT_ATTENTION_LOOPS_FACTORY attention_cpu_loops_avx2
#include "attention/attention_cpu_loops.h"
#endif
