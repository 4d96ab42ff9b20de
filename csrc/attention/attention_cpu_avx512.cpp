// The CPU attention loops for AVX-512 (F, BW, VL) + FMA: the softmax rows' 16-float vectors are
// one register, and exp16 takes the AVX-512 instructions (vrndscaleps, vscalefps).
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX512
#include "attention/attention_cpu_loops.h"
#endif
