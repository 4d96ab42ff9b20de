// The FMA peak loop (fma_loop.h) for AVX-512: 16 floats per instruction.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX512
#include "fma_peak/fma_loop.h"
#endif
