// The CPU pooling loops for the compiler's baseline instruction set (x86-64: SSE2).
#define CNNEXT_POOL2D_LOOPS_FACTORY pool2d_cpu_loops_baseline
#include "pool2d/pool2d_cpu_loops.h"
