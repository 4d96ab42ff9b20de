#include "cuda_emulation/settings.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>

namespace cnnext_emu {
namespace {

std::mutex mutex;

Settings from_environment() {
  Settings s;
  if (const char* name = std::getenv("CNNEXT_EMU_SCHEDULE"); name != nullptr && *name != '\0') {
    s.schedule = parse_schedule(name);
  }
  if (const char* seed = std::getenv("CNNEXT_EMU_SEED"); seed != nullptr && *seed != '\0') {
    s.seed = std::strtoull(seed, nullptr, 10);
  }
  if (const char* count = std::getenv("CNNEXT_EMU_SM_COUNT"); count != nullptr && *count != '\0') {
    s.sm_count = std::atoi(count);
    TORCH_CHECK(s.sm_count >= 1, "CNNEXT_EMU_SM_COUNT must be a positive integer, got '", count, "'");
  }
  if (const char* kb = std::getenv("CNNEXT_EMU_STACK_KB"); kb != nullptr && *kb != '\0') {
    const long value = std::atol(kb);
    TORCH_CHECK(value >= 16, "CNNEXT_EMU_STACK_KB must be at least 16, got '", kb, "'");
    s.stack_bytes = static_cast<size_t>(value) * 1024;
  }
  return s;
}

Settings& current() {
  static Settings s = from_environment();
  return s;
}

}  // namespace

Settings settings() {
  std::lock_guard<std::mutex> lock(mutex);
  return current();
}

std::mt19937_64& schedule_rng() {
  static std::mt19937_64 rng(settings().seed);
  return rng;
}

Schedule parse_schedule(const std::string& name) {
  if (name == "forward") return Schedule::kForward;
  if (name == "reverse") return Schedule::kReverse;
  if (name == "random") return Schedule::kRandom;
  TORCH_CHECK(false, "CUDA emulator: the schedule must be 'forward', 'reverse' or 'random', got '", name,
              "'");
  return Schedule::kForward;
}

std::string schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::kForward:
      return "forward";
    case Schedule::kReverse:
      return "reverse";
    case Schedule::kRandom:
      return "random";
  }
  return "?";
}

void set_schedule(Schedule schedule, uint64_t seed) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    current().schedule = schedule;
    current().seed = seed;
  }
  schedule_rng().seed(seed);
}

void set_multiprocessor_count(int count) {
  TORCH_CHECK(count >= 1, "CUDA emulator: the multiprocessor count must be >= 1, got ", count);
  std::lock_guard<std::mutex> lock(mutex);
  current().sm_count = count;
}

}  // namespace cnnext_emu
