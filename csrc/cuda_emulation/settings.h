// Settings of the CUDA emulator, read from the environment once and changeable at run time
// (torch.ops.cnnext_emu._set_schedule / _set_multiprocessor_count, cnnext.cuda_emulation):
//
//   CNNEXT_EMU_SCHEDULE   forward | reverse | random (default): the order in which a block's
//                         ready threads run between barriers; random also shuffles the blocks
//   CNNEXT_EMU_SEED       seed of the random schedule (default 0)
//   CNNEXT_EMU_SM_COUNT   the multiprocessor count the kernels are told (default 4: small grids)
//   CNNEXT_EMU_STACK_KB   stack per emulated thread (default 256)
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace cnnext_emu {

enum class Schedule { kForward, kReverse, kRandom };

struct Settings {
  Schedule schedule = Schedule::kRandom;
  uint64_t seed = 0;
  int sm_count = 4;
  size_t stack_bytes = 256 * 1024;
};

// A copy of the current settings.
Settings settings();
// The random schedule's generator (per process; reseeded by set_schedule).
std::mt19937_64& schedule_rng();

Schedule parse_schedule(const std::string& name);
std::string schedule_name(Schedule schedule);
void set_schedule(Schedule schedule, uint64_t seed);
void set_multiprocessor_count(int count);

// Every kernel (with its template arguments) launched in this process so far (or since the last
// forget_launched_kernels), with the block size and dynamic shared memory of each distinct launch:
// "name\tthreads\tbytes". Tests that assert which kernel variant ran forget first.
std::vector<std::string> launched_kernels();
void forget_launched_kernels();

}  // namespace cnnext_emu
