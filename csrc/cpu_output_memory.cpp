#include "cpu_output_memory.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <list>
#include <mutex>
#include <string>

namespace cnnext {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

int64_t limit_from_environment() {
  const char* setting = std::getenv("CNNEXT_CPU_CACHE_MB");
  if (setting == nullptr || *setting == '\0') return int64_t{1024} << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(setting, &end, 10);
  TORCH_CHECK(end != setting && *end == '\0' && mb >= 0,
              "CNNEXT_CPU_CACHE_MB must be a whole number of MiB >= 0, got '", setting, "'");
  return static_cast<int64_t>(mb) << 20;
}

struct Block {
  void* data;
  size_t bytes;
};

// The kept blocks, least recently freed first. One per process, never destroyed: tensors freed
// while the process exits still return their blocks here.
class BlockCache {
 public:
  // A block of `bytes` (a multiple of 2 MiB): the most recently freed one of that size if any
  // (likeliest still in cache), else a new one.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
        if (it->bytes != bytes) continue;
        void* data = it->data;
        cached_bytes_ -= static_cast<int64_t>(bytes);
        kept_.erase(std::next(it).base());
        ++reused_;
        return data;
      }
      ++fresh_;
    }
    void* data = nullptr;
    if (posix_memalign(&data, kHugePage, bytes) != 0) data = nullptr;
    TORCH_CHECK(data != nullptr, "cnnext: out of CPU memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge_page_advice_enabled()) madvise(data, bytes, MADV_HUGEPAGE);  // a hint: errors ignored
#endif
    return data;
  }

  void give_back(void* data, size_t bytes) {
    std::list<Block> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      kept_.push_back({data, bytes});
      cached_bytes_ += static_cast<int64_t>(bytes);
      trim(dropped);
    }
    for (const Block& b : dropped) std::free(b.data);
  }

  void set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "set_cpu_output_cache_limit: the limit must be >= 0 bytes, got ", bytes);
    std::list<Block> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      trim(dropped);
    }
    for (const Block& b : dropped) std::free(b.data);
  }

  CpuOutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, limit_, reused_, fresh_};
  }

 private:
  // Drops the least recently freed blocks until the kept ones fit the limit (freed by the caller,
  // outside the lock).
  void trim(std::list<Block>& dropped) {
    while (cached_bytes_ > limit_ && !kept_.empty()) {
      cached_bytes_ -= static_cast<int64_t>(kept_.front().bytes);
      dropped.splice(dropped.end(), kept_, kept_.begin());
    }
  }

  std::mutex mutex_;
  std::list<Block> kept_;
  int64_t cached_bytes_ = 0, limit_ = limit_from_environment(), reused_ = 0, fresh_ = 0;
};

BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

void give_back_block(void* context) {
  auto* block = static_cast<Block*>(context);
  cache().give_back(block->data, block->bytes);
  delete block;
}

// Large requests from the cache; small ones from torch's CPU allocator (so storages this makes
// stay resizable through the same allocator).
class ReusingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < static_cast<size_t>(kMinReusedBytes)) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* data = cache().take(bytes);
    return {data, new Block{data, bytes}, &give_back_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// Never destroyed, like the cache: storages made during static destruction or by other threads at
// exit still find it.
ReusingCpuAllocator& allocator() {
  static auto* instance = new ReusingCpuAllocator();
  return *instance;
}

}  // namespace

at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!options.device().is_cpu() || options.pinned_memory()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), options.memory_format_opt());
}

at::Tensor contiguous_cpu_output(const at::Tensor& t, at::MemoryFormat format) {
  if (!t.device().is_cpu() || t.is_contiguous(format)) return t.contiguous(format);
  auto copy = empty_cpu_output(t.sizes(), t.options().memory_format(format));
  copy.copy_(t);
  return copy;
}

CpuOutputCacheStats cpu_output_cache_stats() { return cache().stats(); }
void set_cpu_output_cache_limit(int64_t bytes) { cache().set_limit(bytes); }
void empty_cpu_output_cache() {
  const int64_t limit = cache().stats().limit_bytes;
  cache().set_limit(0);
  cache().set_limit(limit);
}

bool huge_page_advice_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("CNNEXT_HUGE_PAGES");
    return setting == nullptr || std::strcmp(setting, "0") != 0;
  }();
  return enabled;
}

}  // namespace cnnext
