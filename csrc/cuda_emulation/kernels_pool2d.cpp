// pool2d's CUDA source compiled against the emulator (see emulator.h), unchanged.
#include "pool2d/pool2d_cuda.cu"
