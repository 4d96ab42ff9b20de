// The CPU attention kernels as named variants (cpu_variants.h). One algorithm each way (tiles of
// queries against tiles of keys, attention_cpu_loops.h), in two variants each: the forward
// searches its scores for NaN and infinity only where q, k or the bias hold such values, and the
// backward splits a head's key tiles over threads only when there are fewer (batch, key/value
// head) pairs than threads. attention_cpu_variants.cpp names them and counts their calls.
#pragma once

namespace cnnext {

enum class AttentionCpuVariant : int {
  kForwardTiled,
  kForwardTiledSearchingScores,
  kBackwardKeyTilesPerHead,
  kBackwardKeyTilesInChunks,
  kCount,
};

// Counts one call of the variant (called from every instruction-set build of the loops).
void count_attention_cpu_variant(AttentionCpuVariant variant);

}  // namespace cnnext
