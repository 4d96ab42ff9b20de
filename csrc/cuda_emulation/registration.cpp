// torch.ops.cnnext_emu: every cnnext operator with the schema of torch.ops.cnnext, served on CPU
// tensors by the CUDA implementations compiled against the emulator (kernels_*.cpp), plus the
// emulator's own controls. Loaded by cnnext.cuda_emulation; never part of cnnext._C.
#include <torch/library.h>

#include "cuda_emulation/settings.h"
#include "operator_schemas.h"

namespace {

void set_schedule(std::string schedule, int64_t seed) {
  TORCH_CHECK(seed >= 0, "CUDA emulator: the seed must be >= 0, got ", seed);
  cnnext_emu::set_schedule(cnnext_emu::parse_schedule(schedule), static_cast<uint64_t>(seed));
}

std::string get_schedule() { return cnnext_emu::schedule_name(cnnext_emu::settings().schedule); }

void set_multiprocessor_count(int64_t count) {
  cnnext_emu::set_multiprocessor_count(static_cast<int>(count));
}

int64_t get_multiprocessor_count() { return cnnext_emu::settings().sm_count; }

}  // namespace

TORCH_LIBRARY(cnnext_emu, m) {
  cnnext::define_operator_schemas(m);
  m.def("_set_schedule(str schedule, int seed) -> ()", &set_schedule);
  m.def("_get_schedule() -> str", &get_schedule);
  m.def("_set_multiprocessor_count(int count) -> ()", &set_multiprocessor_count);
  m.def("_get_multiprocessor_count() -> int", &get_multiprocessor_count);
  m.def("_launched_kernels() -> str[]", &cnnext_emu::launched_kernels);
  m.def("_forget_launched_kernels() -> ()", &cnnext_emu::forget_launched_kernels);
}

TORCH_LIBRARY_IMPL(cnnext_emu, CPU, m) { cnnext::register_cuda_kernels(m); }
