// The CPU attention loops for AVX2 + FMA: the softmax rows' 16-float vectors are two registers
// wide, and the exp polynomial's multiply-adds fuse.
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX2_FMA
#include "attention/attention_cpu_loops.h"
#endif
