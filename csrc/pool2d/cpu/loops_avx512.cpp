// The CPU pooling loops for AVX-512 (F/BW/VL): 16 floats per vector, and mask registers for the
// int32 argmax lanes beside the float ones. This build may contract a multiply-add into an FMA
// (the channels_last average backward's `+= gradient * 1/divisor`), which rounds once where the
// baseline and AVX2 builds round twice: at most an ulp apart (figures: benchmarks/NOTES.md,
// "Named CPU variants, machine facts, clang-format").
#if defined(__x86_64__)
#define CNNEXT_TARGET_ISA CNNEXT_ISA_AVX512
#include "pool2d/cpu/loops.h"
#endif
