// Asynchronous copies from global to shared memory (sm_80's cp.async) for cnnext's CUDA kernels:
// inline PTX on a GPU, and under the CUDA emulator (CNNEXT_CUDA_EMULATION) the same semantics,
// copies included only when waited for, so a kernel that reads a stage before waiting for it (or
// before the barrier after the wait) computes with stale shared memory there too, and its tests fail.
//
// copy_16_async(dst, src, src_bytes): starts copying 16 bytes to shared memory at dst (16-byte
//   aligned) from global memory at src (16-byte aligned): the first src_bytes (0 or 16) from src,
//   the rest zeros. src_bytes = 0 writes 16 zero bytes and reads nothing (src must still be a valid
//   pointer value). PTX cp.async.cg.shared.global (cached in L2 only: each element is read once).
// commit_copies(): closes the group of copies this thread started since its last commit.
// wait_copies<N>(): waits until at most the N most recently committed groups of this thread are
//   still in flight. Copies are per thread: other threads see them after wait_copies and a
//   __syncthreads.
//
// Every copy must be waited for before its kernel returns (wait_copies<0>()); the emulator traps on
// copies a finished block left behind.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_device.h"

namespace cnnext::cuda {

#ifdef CNNEXT_CUDA_EMULATION

// One emulated thread's copies in flight, in issue order, each tagged with its commit group. Plain
// data without constructors: the per-thread table below is a static thread_local that needs no
// initialisation guard (ThreadSanitizer reports a guard's flag read by several fibers as a race).
struct PendingCopies {
  struct Copy {
    void* dst;
    const void* src;
    int src_bytes, group;
  };
  static constexpr int kCapacity = 64;
  Copy copies[kCapacity];
  int count;       // copies in flight
  int open_group;  // the group the next copy joins; closed by commit_copies
  uint3 block;     // the block that started the copies in flight
};

inline PendingCopies& pending_copies() {
  static thread_local PendingCopies per_thread[1024];  // a block holds at most 1024 threads
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  PendingCopies& mine = per_thread[thread];
  const uint3 block = blockIdx;
  if (mine.block.x != block.x || mine.block.y != block.y || mine.block.z != block.z) {
    if (mine.count != 0) {
      ::cnnext_emu::trap(CNNEXT_EMU_SITE,
                         "cp.async copies of an earlier block were never waited for (wait_copies<0>)");
    }
    mine.block = block;
    mine.open_group = 0;
  }
  return mine;
}

__device__ inline void copy_16_async(void* dst, const void* src, int src_bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % 16 != 0) {
    ::cnnext_emu::trap(CNNEXT_EMU_SITE, "cp.async of 16 bytes from or to an address not 16-byte aligned");
  }
  if (src_bytes != 0 && src_bytes != 16) {
    ::cnnext_emu::trap(CNNEXT_EMU_SITE, "cp.async source size must be 0 or 16 bytes here");
  }
  PendingCopies& mine = pending_copies();
  if (mine.count == PendingCopies::kCapacity) {
    ::cnnext_emu::trap(CNNEXT_EMU_SITE,
                       "more cp.async copies in flight in one thread than the emulator holds (64)");
  }
  mine.copies[mine.count++] = {dst, src, src_bytes, mine.open_group};
}

__device__ inline void commit_copies() { ++pending_copies().open_group; }

template <int N>
__device__ inline void wait_copies() {
  PendingCopies& mine = pending_copies();
  const int done_below = mine.open_group - N;  // groups before this one must have landed
  int kept = 0;
  for (int i = 0; i < mine.count; ++i) {
    const PendingCopies::Copy& copy = mine.copies[i];
    if (copy.group < done_below) {
      std::memset(copy.dst, 0, 16);
      if (copy.src_bytes > 0) std::memcpy(copy.dst, copy.src, static_cast<size_t>(copy.src_bytes));
    } else {
      mine.copies[kept++] = copy;
    }
  }
  mine.count = kept;
}

#else

__device__ __forceinline__ void copy_16_async(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto shared = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(src_bytes));
#else
  __trap();  // built for an architecture before sm_80: callers choose another path there
#endif
}

__device__ __forceinline__ void commit_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void wait_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

#endif

}  // namespace cnnext::cuda
