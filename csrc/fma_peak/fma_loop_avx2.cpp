// The FMA peak loop (fma_loop.h) for AVX2 + FMA: 8 floats per instruction.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX2_FMA
#include "fma_peak/fma_loop.h"
#endif
