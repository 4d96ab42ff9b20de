// The CPU pooling loops for AVX2: 8 floats per vector instead of SSE2's 4. No FMA, so results
// round as in the baseline build (figures: benchmarks/NOTES.md, "Pooling, CPU").
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX2
#include "pool2d/cpu/loops.h"
#endif
