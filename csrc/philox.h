// Counter-based random numbers for dropout masks that backward regenerates instead of storing:
// Philox-4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011), the generator FlashAttention and PyTorch's CUDA dropout use. Four 32-bit outputs are a
// pure function of a 64-bit key (the seed) and a 128-bit counter, so any element's number can be
// computed on its own, in any order, on any device: the same seed gives the same mask on the CPU,
// the CUDA emulator and a GPU.
//
// Element e of a dropout mask with (seed, offset) takes output e % 4 of the counter
// (e / 4, offset); it is kept when that output's top 24 bits, as a fraction of 2^24, are at least
// p. So P(kept) = 1 - p to within 2^-24.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace cnnext {

struct PhiloxBlock {
  uint32_t x[4];
};

C10_HOST_DEVICE inline uint32_t philox_mulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox-4x32 with 10 rounds of counter (c0..c3) under key (k0, k1).
C10_HOST_DEVICE inline PhiloxBlock philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = philox_mulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = philox_mulhi(kM1, c2), lo1 = kM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// The keep threshold of dropout probability p: element kept iff its 24-bit number >= threshold.
C10_HOST_DEVICE inline uint32_t dropout_threshold(double p) {
  const double scaled = p * 16777216.0;  // 2^24
  return scaled >= 16777216.0 ? 16777216u : static_cast<uint32_t>(scaled + 0.5);
}

// Output w (0..3) of a block, chosen by selects: indexing the array with a run-time w would put
// the block in GPU local memory.
C10_HOST_DEVICE inline uint32_t philox_word(const PhiloxBlock& block, uint64_t w) {
  return w == 0 ? block.x[0] : w == 1 ? block.x[1] : w == 2 ? block.x[2] : block.x[3];
}

// Whether element `index` of the dropout mask (seed, offset) is kept, for keep threshold t.
C10_HOST_DEVICE inline bool dropout_keeps(uint64_t seed, uint64_t offset, uint64_t index,
                                          uint32_t threshold) {
  const PhiloxBlock block = philox4x32_10(index / 4, offset, seed);
  return (philox_word(block, index % 4) >> 8) >= threshold;
}

}  // namespace cnnext
