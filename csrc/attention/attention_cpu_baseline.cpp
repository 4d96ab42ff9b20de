// The CPU attention loops for the compiler's baseline instruction set (x86-64: SSE2).
#define CNNEXT_ATTENTION_LOOPS_FACTORY attention_cpu_loops_baseline
#include "attention/attention_cpu_loops.h"
