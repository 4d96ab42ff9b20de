// Cache sizes from the OS (cpu_cache.h).
#include "cpu_cache.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace cnnext {
namespace {

constexpr int64_t kFallbackL2Bytes = int64_t{1} << 20;

// "2048K" / "2M" / "1048576" (as /sys/devices/system/cpu/cpu0/cache/index*/size writes it) in
// bytes; 0 for anything else.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || value <= 0 || value > (int64_t{1} << 40)) return 0;
  const std::string unit(end);
  if (unit.empty()) return value;
  if (unit == "K") return value << 10;
  if (unit == "M") return value << 20;
  return 0;
}

// The size of cpu0's unified level-2 cache from sysfs, 0 if none is listed.
int64_t l2_from_sysfs() {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    if (level == 2) return parse_size(size);
  }
  return 0;
}

int64_t read_l2_cache_bytes() {
  if (const char* text = std::getenv("CNNEXT_L2_CACHE_BYTES"); text != nullptr && *text != '\0') {
    const int64_t bytes = parse_size(text);
    TORCH_CHECK(bytes >= 64 * 1024 && bytes <= (int64_t{1} << 30),
                "CNNEXT_L2_CACHE_BYTES must be a size between 64K and 1G",
                " (bytes, or with a K or M suffix), got '", text, "'");
    return bytes;
  }
#ifdef _SC_LEVEL2_CACHE_SIZE
  if (const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE); bytes > 0) return bytes;
#endif
  if (const int64_t bytes = l2_from_sysfs(); bytes > 0) return bytes;
  return kFallbackL2Bytes;
}

}  // namespace

int64_t cpu_l2_cache_bytes() {
  static const int64_t bytes = read_l2_cache_bytes();
  return bytes;
}

}  // namespace cnnext
