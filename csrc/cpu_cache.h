// Cache sizes of the CPU the process runs on, for the kernels that size their working sets by
// them (the conv2d GEMM path's column blocks, the direct weight gradient's sample groups).
#pragma once

#include <cstdint>

namespace cnnext {

// The L2 cache of one core in bytes: CNNEXT_L2_CACHE_BYTES if set (for experiments and tests),
// else what the OS reports (sysconf, then /sys/devices/system/cpu/cpu0/cache), else 1 MiB, the
// size the blocks were first tuned on. Read once per process; a bad override raises.
int64_t cpu_l2_cache_bytes();

}  // namespace cnnext
