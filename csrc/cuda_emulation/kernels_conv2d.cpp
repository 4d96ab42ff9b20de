// conv2d's CUDA source compiled against the emulator (see emulator.h), unchanged.
#include "conv2d/conv2d_cuda.cu"
