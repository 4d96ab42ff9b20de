// Pooling on the CPU: the operator entry points (pool2d_entries.h) bound to the CPU loops. Per
// call, the variant comes from the table in cpu/variants.cpp and the loops from the best
// instruction-set build of cpu/loops.h the CPU runs (cpu_isa.h; CNNEXT_CPU_ISA=baseline forces
// the baseline build).
#include <limits>

#include "cpu_isa.h"
#include "cpu_output_memory.h"
#include "pool2d/cpu/variants.h"
#include "pool2d/pool2d_entries.h"

namespace cnnext {
namespace {

const Pool2dCpuLoops& loops() {
#if defined(__x86_64__)
  static const Pool2dCpuLoops table = cpu_use_avx512() ? pool2d_cpu_loops_avx512()
                                      : cpu_use_avx2() ? pool2d_cpu_loops_avx2()
                                                       : pool2d_cpu_loops_baseline();
#else
  static const Pool2dCpuLoops table = pool2d_cpu_loops_baseline();
#endif
  return table;
}

struct CpuLoops {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return empty_cpu_output(sizes, options);
  }

  static void max_forward(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                          const Pool2dGeometry& g, bool channels_last) {
    // The CPU loops track the argmax as int32 beside the float lanes.
    TORCH_CHECK(g.in_h * g.in_w <= std::numeric_limits<int32_t>::max(),
                "max_pool2d (CPU): planes of more than 2^31 - 1 elements are not supported, got ", g.in_h,
                "x", g.in_w);
    loops().max_forward(choose_max_forward(g, channels_last), x, out, indices, g);
  }
  static void max_backward(const at::Tensor& dy, const at::Tensor& indices, const at::Tensor& dx,
                           const Pool2dGeometry& g, bool channels_last) {
    const bool taps = indices.scalar_type() == at::kByte;
    loops().max_backward(choose_max_backward(g, channels_last, taps), dy, indices, dx, g);
  }
  static void avg_forward(const at::Tensor& x, const at::Tensor& out, const Pool2dGeometry& g,
                          AvgDivisor divisor, bool channels_last) {
    loops().avg_forward(choose_avg_forward(g, channels_last), x, out, g, divisor);
  }
  static void avg_backward(const at::Tensor& dy, const at::Tensor& dx, const Pool2dGeometry& g,
                           AvgDivisor divisor, bool channels_last) {
    loops().avg_backward(choose_avg_backward(g, channels_last), dy, dx, g, divisor);
  }
};

}  // namespace

CNNEXT_DEFINE_POOL2D_ENTRY_POINTS(cpu, CpuLoops)

}  // namespace cnnext
