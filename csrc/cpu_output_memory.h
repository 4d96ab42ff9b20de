// Memory for the large CPU tensors cnnext's ops return (pooling and convolution outputs and
// gradients), kept when freed and handed to the next request of the same size.
//
// Why: torch's CPU allocator takes a tensor of tens of MB from a fresh mmap (glibc maps blocks
// above its threshold, at most 32 MiB, and unmaps them on free), so every call's first write
// faults in and zeroes every page again. On this project's 2-core VMs that cost 3-9 ms for a
// 32 MiB pooling gradient whose computation takes 2-3 ms, and native pays it too, so a ratio
// measured there swings with the VM's page-fault phase (benchmarks/NOTES.md, "Reused output
// memory"). A training step frees such a tensor and asks for one of the same size the next step:
// handing back the freed block skips the faults.
//
// Requests of at least kMinReusedBytes are rounded up to 2 MiB, 2 MiB-aligned, and (unless
// CNNEXT_HUGE_PAGES=0) advised to use transparent huge pages; freed blocks are kept, the least
// recently freed dropped first, up to a limit (CNNEXT_CPU_CACHE_MB, default 1024; 0 keeps none;
// also set_cpu_output_cache_limit). Smaller requests come from torch's CPU allocator, unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cnnext {

constexpr int64_t kMinReusedBytes = int64_t{4} << 20;

// An uninitialised CPU tensor like at::empty(sizes, options) (options' memory format honoured),
// from the reusing allocator when it is large. Other devices: at::empty.
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// t.contiguous(format) whose copy, when one is needed, also comes from empty_cpu_output (the
// layout round trips of the NCHW convolution copy whole activations each call).
at::Tensor contiguous_cpu_output(const at::Tensor& t, at::MemoryFormat format);

struct CpuOutputCacheStats {
  int64_t cached_bytes;  // held for reuse now
  int64_t limit_bytes;
  int64_t reused;  // large requests served from a kept block
  int64_t fresh;   // large requests that allocated a new block
};
CpuOutputCacheStats cpu_output_cache_stats();
void set_cpu_output_cache_limit(int64_t bytes);  // drops kept blocks beyond the new limit
void empty_cpu_output_cache();                   // drops every kept block (live tensors unaffected)

// Whether large blocks are advised to use transparent huge pages: false when CNNEXT_HUGE_PAGES=0;
// decided once per process.
bool huge_page_advice_enabled();

}  // namespace cnnext
