// The CPU pooling loops for the compiler's baseline instruction set (x86-64: SSE2).
#define CNNEXT_TARGET_ISA CNNEXT_ISA_BASELINE
#include "pool2d/cpu/loops.h"
