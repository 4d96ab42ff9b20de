// The CPU attention loops for the compiler's baseline instruction set (x86-64: SSE2).
#define CNNEXT_TARGET_ISA CNNEXT_ISA_BASELINE
#include "attention/attention_cpu_loops.h"
