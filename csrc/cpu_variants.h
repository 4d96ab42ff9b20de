// CPU kernel variants. Each CPU op chooses, per call, one kernel variant from an explicit table
// kept beside its code (pool2d/cpu/variants.cpp, conv2d/conv2d_cpu_variants.cpp,
// attention/attention_cpu_variants.cpp): a name, the condition under which the op chooses it in
// words, and how many calls it has served in this process. The counts make the choice visible:
// tests prove every variant is reached and checked, and benchmarks name the variant each case
// measures (Python: cnnext.cpu_variants()).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cnnext {

struct CpuVariant {
  const char* op;    // the kernel it implements, e.g. "max_pool2d_forward"
  const char* name;  // unique within the op, e.g. "nchw_2x2_tiling"
  const char* when;  // the condition under which the op chooses it
  std::atomic<int64_t> calls{0};

  // Called once per op call that runs this variant (relaxed: a statistic, not a synchronisation).
  void count() { calls.fetch_add(1, std::memory_order_relaxed); }
};

// Counts one call of `variant` in an op's table, whose entries follow the enum's order (the table
// must hold one entry per value before Variant::kCount).
template <typename Variant, size_t N>
void count_variant(CpuVariant (&table)[N], Variant variant) {
  static_assert(N == static_cast<size_t>(Variant::kCount), "one table entry per variant");
  table[static_cast<size_t>(variant)].count();
}

// Pointers to the entries of an op's table, in its order.
template <size_t N>
std::vector<CpuVariant*> entries_of(CpuVariant (&table)[N]) {
  std::vector<CpuVariant*> entries;
  for (CpuVariant& v : table) entries.push_back(&v);
  return entries;
}

// Every op's table, each in its own order.
std::vector<CpuVariant*> pool2d_cpu_variants();
std::vector<CpuVariant*> conv2d_cpu_variants();
std::vector<CpuVariant*> attention_cpu_variants();

inline std::vector<CpuVariant*> all_cpu_variants() {
  std::vector<CpuVariant*> all;
  for (auto* table : {&pool2d_cpu_variants, &conv2d_cpu_variants, &attention_cpu_variants})
    for (CpuVariant* v : table()) all.push_back(v);
  return all;
}

}  // namespace cnnext
