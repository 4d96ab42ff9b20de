// attention's CUDA source compiled against the emulator (see emulator.h), unchanged.
#include "attention/attention_cuda.cu"
