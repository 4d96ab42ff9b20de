// The FMA peak loop (fma_loop.h) for the baseline level: on x86-64 SSE2, a multiply and an add per
// multiply-add; on other CPUs whatever the compiler's default target offers.
#define CNNEXT_TARGET_ISA CNNEXT_ISA_BASELINE
#include "fma_peak/fma_loop.h"
