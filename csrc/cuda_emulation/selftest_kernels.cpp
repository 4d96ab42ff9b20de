// Small kernels, written in CUDA as any .cu file, that pin down the emulator's own semantics:
// built-in variables, dynamic shared memory, the reducing barriers, warp collectives, atomics, the
// launch checks, and deliberately broken kernels (races, divergent barriers, bad masks, overflows)
// that the schedules, the error checks and the sanitizer passes must catch. Registered as private
// ops torch.ops.cnnext_emu._selftest_*; tests/test_cuda_emulation.py drives them.
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_async_copy.h"
#include "cuda_device.h"
#include "cuda_fast_divmod.h"
#include "cuda_tensor_cores.h"

namespace cnnext_emu_selftest {
namespace {

using cnnext::cuda::launch;
using cnnext::cuda::LaunchConfig;

// out[block, thread] = (threadIdx, blockIdx, blockDim, gridDim) as 12 ints; shared_ok: whether the
// block's dynamic shared memory was all 0xFF bytes when the block started.
__global__ void indices_kernel(int* out, int* shared_ok, int shared_bytes) {
  const unsigned char* shared = cnnext::cuda::dynamic_shared_memory<unsigned char>();
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  int* o = out + (int64_t(block) * threads + thread) * 12;
  const unsigned values[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                               blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
  for (int i = 0; i < 12; ++i) o[i] = static_cast<int>(values[i]);
  if (thread == 0) {
    int ok = 1;
    for (int i = 0; i < shared_bytes; ++i) ok &= shared[i] == 0xff;
    shared_ok[block] = ok;
  }
  __syncthreads();
  // Dirty the shared memory, so that the next block sees it refilled, not left over.
  unsigned char* writable = cnnext::cuda::dynamic_shared_memory<unsigned char>();
  for (int i = thread; i < shared_bytes; i += threads) writable[i] = 0;
}

at::Tensor launch_indices(at::IntArrayRef grid, at::IntArrayRef block, int64_t shared_bytes, int64_t opt_in) {
  const dim3 g(grid[0], grid[1], grid[2]), b(block[0], block[1], block[2]);
  if (opt_in > 0) cnnext::cuda::allow_dynamic_shared<indices_kernel>(static_cast<size_t>(opt_in));
  const int64_t blocks = int64_t(g.x) * g.y * g.z, threads = int64_t(b.x) * b.y * b.z;
  auto out = at::empty({blocks > 0 ? blocks : 0, threads > 0 ? threads : 0, 12}, at::kInt);
  auto shared_ok = at::zeros({blocks > 0 ? blocks : 1}, at::kInt);
  launch<indices_kernel>({g, b, static_cast<size_t>(shared_bytes)}, out.data_ptr<int>(),
                         shared_ok.data_ptr<int>(), static_cast<int>(shared_bytes));
  return at::cat({out.flatten(), shared_ok});
}

// out[i] = the warp collective `op` of thread i with operand x[i] (float), mask, lane argument, width.
__global__ void warp_kernel(const float* x, float* out, int op, unsigned mask, int arg, int width, int n) {
  const int i = threadIdx.x;
  if (i >= n) return;  // threads past n exit at once: a mask naming them is an error
  if (!((mask >> (i % 32)) & 1u)) {
    out[i] = -1.0f;  // not a participant
    return;
  }
  const float v = x[i];
  switch (op) {
    case 0:
      out[i] = __shfl_sync(mask, v, arg, width);
      break;
    case 1:
      out[i] = __shfl_up_sync(mask, v, arg, width);
      break;
    case 2:
      out[i] = __shfl_down_sync(mask, v, arg, width);
      break;
    case 3:
      out[i] = __shfl_xor_sync(mask, v, arg, width);
      break;
    case 4:
      out[i] = static_cast<float>(__ballot_sync(mask, v > 0.0f));
      break;
    case 5:
      out[i] = static_cast<float>(__any_sync(mask, v > 0.0f));
      break;
    case 6:
      out[i] = static_cast<float>(__all_sync(mask, v > 0.0f));
      break;
    case 7:
      out[i] = static_cast<float>(__activemask());
      break;
    default:
      __syncwarp(mask);
      out[i] = v;
      break;
  }
}

at::Tensor warp(const at::Tensor& x, int64_t op, int64_t mask, int64_t arg, int64_t width, int64_t threads) {
  auto out = at::full({threads}, -2.0f, x.options());
  launch<warp_kernel>({1, static_cast<unsigned>(threads)}, x.data_ptr<float>(), out.data_ptr<float>(),
                      static_cast<int>(op), static_cast<unsigned>(mask), static_cast<int>(arg),
                      static_cast<int>(width), static_cast<int>(x.numel()));
  return out;
}

// out[i] = __syncthreads_count / _and / _or of pred[i] (kind 0, 1, 2).
__global__ void barrier_reduce_kernel(const int* pred, int* out, int kind) {
  const int i = threadIdx.x;
  if (kind == 0) out[i] = __syncthreads_count(pred[i]);
  if (kind == 1) out[i] = __syncthreads_and(pred[i]);
  if (kind == 2) out[i] = __syncthreads_or(pred[i]);
}

at::Tensor barrier_reduce(const at::Tensor& pred, int64_t kind) {
  auto out = at::empty_like(pred);
  launch<barrier_reduce_kernel>({1, static_cast<unsigned>(pred.numel())}, pred.data_ptr<int>(),
                                out.data_ptr<int>(), static_cast<int>(kind));
  return out;
}

// Every thread of every block adds 1 (int), 0.5 (float, double) and takes the max of its index.
__global__ void atomics_kernel(int* count, float* sum_f, double* sum_d, int* max_index,
                               unsigned long long* sum_u64) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(count, 1);
  atomicAdd(sum_f, 0.5f);
  atomicAdd(sum_d, 0.5);
  atomicMax(max_index, i);
  atomicAdd(sum_u64, 1ull);
}

at::Tensor atomics(int64_t blocks, int64_t threads) {
  auto ints = at::zeros({2}, at::kInt);
  auto f = at::zeros({1}, at::kFloat);
  auto d = at::zeros({1}, at::kDouble);
  auto u = at::zeros({1}, at::kLong);
  launch<atomics_kernel>({static_cast<unsigned>(blocks), static_cast<unsigned>(threads)},
                         ints.data_ptr<int>(), f.data_ptr<float>(), d.data_ptr<double>(),
                         ints.data_ptr<int>() + 1,
                         reinterpret_cast<unsigned long long*>(u.data_ptr<int64_t>()));
  return at::stack(
      {ints[0].to(at::kDouble), f[0].to(at::kDouble), d[0], ints[1].to(at::kDouble), u[0].to(at::kDouble)});
}

// Races the schedules must expose. out[i] = shared[i - 1] after every thread wrote shared[i] = i + 1
// ("lower", correct only if thread i - 1 ran first), or shared[i + 1] ("upper"); and a shared-memory
// tree sum of 1s ("tree", 256 threads: correct = 256). `barrier` puts the missing barriers back.
__global__ void race_kernel(int* out, int which, bool barrier) {
  __shared__ int slots[1024];
  const int i = threadIdx.x, n = blockDim.x;
  slots[i] = -7;  // a stale value, the same whatever ran before
  __syncthreads();
  if (which == 2) {
    slots[i] = 1;
    if (barrier) __syncthreads();
    for (int width = n / 2; width > 0; width /= 2) {
      if (i < width) slots[i] += slots[i + width];
      if (barrier) __syncthreads();
    }
    if (i == 0) out[0] = slots[0];
    return;
  }
  slots[i] = i + 1;
  if (barrier) __syncthreads();
  const int neighbour = which == 0 ? i - 1 : i + 1;
  out[i] = (neighbour >= 0 && neighbour < n) ? slots[neighbour] : 0;
}

at::Tensor race(int64_t which, int64_t threads, bool barrier) {
  auto out = at::zeros({threads}, at::kInt);
  launch<race_kernel>({1, static_cast<unsigned>(threads)}, out.data_ptr<int>(), static_cast<int>(which),
                      barrier);
  return out;
}

// Kernels that break the rules, by `mode`.
__global__ void broken_kernel(int mode, float* out, int n) {
  const int i = threadIdx.x;
  switch (mode) {
    case 0:  // divergent barriers
      if (i < 32) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 1:  // threads exit while others wait
      if (i >= 32) return;
      __syncthreads();
      break;
    case 2:  // a warp mask naming lanes that have exited
      if (i >= 16) return;
      out[i] = __shfl_sync(0xffffffffu, 1.0f, 0);
      break;
    case 3:  // a mask without the calling lane
      out[i] = __shfl_sync(0x1u, 1.0f, 0);
      break;
    case 4:  // lanes of one mask at a warp collective while others wait at __syncthreads
      if (i % 32 == 0) {
        __syncthreads();
      } else {
        __syncwarp();
      }
      break;
    case 5:  // a write past the end of a buffer (for the AddressSanitizer pass)
      out[n + i] = 1.0f;
      break;
    case 6:  // two blocks write the same element without atomics (for the ThreadSanitizer pass)
      out[0] += 1.0f;
      break;
    case 7:
      __trap();
      break;
    case 8: {  // a block exits with an asynchronous copy in flight (the next block's copy traps)
      __align__(16) __shared__ float landing[4];
      cnnext::cuda::copy_16_async(landing, out, 16);
      cnnext::cuda::commit_copies();
      break;
    }
    case 9: {  // an asynchronous copy from an address that is not 16-byte aligned
      __align__(16) __shared__ float landing[4];
      cnnext::cuda::copy_16_async(landing, out + 1, 16);
      break;
    }
    default:
      break;
  }
}

void broken(int64_t mode, int64_t blocks, int64_t threads) {
  auto out = at::zeros({threads}, at::kFloat);
  // Mode 5 writes into a buffer exactly `threads` floats long, from a fresh heap allocation.
  launch<broken_kernel>({static_cast<unsigned>(blocks), static_cast<unsigned>(threads)},
                        static_cast<int>(mode), out.data_ptr<float>(), static_cast<int>(threads));
}

// d (16, 8) = a (16, 16) @ b + c by one warp's mma_m16n8k16, each lane loading its fragments from
// memory as cuda_tensor_cores.h documents them: a row-major, b given as bt = b^T (8, 16) row-major
// (the instruction's column-major B), c and d row-major float.
template <typename T>
__global__ void mma_kernel(const T* a, const T* bt, const float* c, float* d) {
  using cnnext::cuda::pack_pair;
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const auto A = [&](int row, int k) { return a[row * 16 + k]; };
  const auto B = [&](int k, int col) { return bt[col * 16 + k]; };
  const uint32_t fa[4] = {
      pack_pair(A(g, 2 * t), A(g, 2 * t + 1)), pack_pair(A(g + 8, 2 * t), A(g + 8, 2 * t + 1)),
      pack_pair(A(g, 2 * t + 8), A(g, 2 * t + 9)), pack_pair(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9))};
  const uint32_t fb[2] = {pack_pair(B(2 * t, g), B(2 * t + 1, g)),
                          pack_pair(B(2 * t + 8, g), B(2 * t + 9, g))};
  const int top = g * 8 + 2 * t, bottom = (g + 8) * 8 + 2 * t;
  const float fc[4] = {c[top], c[top + 1], c[bottom], c[bottom + 1]};
  float fd[4];
  cnnext::cuda::mma_m16n8k16<T>(fd, fa, fb, fc);
  d[top] = fd[0];
  d[top + 1] = fd[1];
  d[bottom] = fd[2];
  d[bottom + 1] = fd[3];
}

at::Tensor mma(const at::Tensor& a, const at::Tensor& bt, const at::Tensor& c) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && bt.sizes() == at::IntArrayRef({8, 16}) &&
                  c.sizes() == at::IntArrayRef({16, 8}) && c.scalar_type() == at::kFloat &&
                  a.scalar_type() == bt.scalar_type() && a.is_contiguous() && bt.is_contiguous() &&
                  c.is_contiguous(),
              "_selftest_mma: a (16, 16), bt (8, 16) of one 16-bit type, c (16, 8) float, all contiguous");
  auto d = at::empty({16, 8}, at::kFloat);
  if (a.scalar_type() == at::kHalf) {
    launch<mma_kernel<c10::Half>>({1, 32}, a.const_data_ptr<c10::Half>(), bt.const_data_ptr<c10::Half>(),
                                  c.const_data_ptr<float>(), d.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(a.scalar_type() == at::kBFloat16, "_selftest_mma: half or bfloat16, got ", a.scalar_type());
    launch<mma_kernel<c10::BFloat16>>({1, 32}, a.const_data_ptr<c10::BFloat16>(),
                                      bt.const_data_ptr<c10::BFloat16>(), c.const_data_ptr<float>(),
                                      d.mutable_data_ptr<float>());
  }
  return d;
}

// Asynchronous copies as cuda_async_copy.h emulates them, one warp: lane i starts copying chunk i
// of src (4 floats) in group 0, then chunk 32 + i and a zero fill (no source bytes) in group 1, and
// reads its shared landing places (filled with -1 first) after wait_copies<1> and wait_copies<0>.
// out (32, 4, 4): [A after wait<1>, B after wait<1>, B after wait<0>, zero fill after wait<0>].
__global__ void async_copy_kernel(const float* src, float* out) {
  __align__(16) __shared__ float a[32][4], b[32][4], zero[32][4];
  const int lane = threadIdx.x;
  for (int e = 0; e < 4; ++e) a[lane][e] = b[lane][e] = zero[lane][e] = -1.0f;
  cnnext::cuda::copy_16_async(a[lane], src + 4 * lane, 16);
  cnnext::cuda::commit_copies();
  cnnext::cuda::copy_16_async(b[lane], src + 4 * (32 + lane), 16);
  cnnext::cuda::copy_16_async(zero[lane], src, 0);
  cnnext::cuda::commit_copies();
  float* mine = out + 16 * lane;
  cnnext::cuda::wait_copies<1>();
  for (int e = 0; e < 4; ++e) mine[e] = a[lane][e], mine[4 + e] = b[lane][e];
  cnnext::cuda::wait_copies<0>();
  for (int e = 0; e < 4; ++e) mine[8 + e] = b[lane][e], mine[12 + e] = zero[lane][e];
}

at::Tensor async_copy(const at::Tensor& src) {
  TORCH_CHECK(src.sizes() == at::IntArrayRef({64, 4}) && src.scalar_type() == at::kFloat &&
                  src.is_contiguous() && reinterpret_cast<uintptr_t>(src.const_data_ptr()) % 16 == 0,
              "_selftest_async_copy: src (64, 4) float, contiguous and 16-byte aligned");
  auto out = at::empty({32, 4, 4}, at::kFloat);
  launch<async_copy_kernel>({1, 32}, src.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  return out;
}

// d (16, 8) = tf32(a) (16, 8) @ tf32(b) + c by one warp's mma_m16n8k8_tf32, the fragments loaded and
// rounded (to_tf32) as cuda_tensor_cores.h documents: a row-major, bt = b^T (8, 8) row-major.
__global__ void mma_tf32_kernel(const float* a, const float* bt, const float* c, float* d) {
  using cnnext::cuda::to_tf32;
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const auto A = [&](int row, int k) { return to_tf32(a[row * 8 + k]); };
  const auto B = [&](int k, int col) { return to_tf32(bt[col * 8 + k]); };
  const uint32_t fa[4] = {A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4)};
  const uint32_t fb[2] = {B(t, g), B(t + 4, g)};
  const int top = g * 8 + 2 * t, bottom = (g + 8) * 8 + 2 * t;
  const float fc[4] = {c[top], c[top + 1], c[bottom], c[bottom + 1]};
  float fd[4];
  cnnext::cuda::mma_m16n8k8_tf32(fd, fa, fb, fc);
  d[top] = fd[0];
  d[top + 1] = fd[1];
  d[bottom] = fd[2];
  d[bottom + 1] = fd[3];
}

at::Tensor mma_tf32(const at::Tensor& a, const at::Tensor& bt, const at::Tensor& c) {
  const auto is_float = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.is_contiguous();
  };
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 8}) && bt.sizes() == at::IntArrayRef({8, 8}) &&
                  c.sizes() == at::IntArrayRef({16, 8}) && is_float(a) && is_float(bt) && is_float(c),
              "_selftest_mma_tf32: a (16, 8), bt (8, 8), c (16, 8), float and contiguous");
  auto d = at::empty({16, 8}, at::kFloat);
  launch<mma_tf32_kernel>({1, 32}, a.const_data_ptr<float>(), bt.const_data_ptr<float>(),
                          c.const_data_ptr<float>(), d.mutable_data_ptr<float>());
  return d;
}

// FastDivmod (cuda_fast_divmod.h) as the kernels use it: quotient and remainder of every dividend by
// `divisor`, for comparison with plain division.
at::Tensor fast_divmod(const at::Tensor& dividends, int64_t divisor) {
  TORCH_CHECK(dividends.scalar_type() == at::kLong && dividends.dim() == 1,
              "_selftest_fast_divmod: dividends must be a 1-D int64 tensor");
  const cnnext::cuda::FastDivmod by(divisor);
  auto out = at::empty({dividends.size(0), 2}, dividends.options());
  const auto n = dividends.accessor<int64_t, 1>();
  auto o = out.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n.size(0); ++i) {
    TORCH_CHECK(n[i] >= 0 && n[i] <= cnnext::cuda::kMaxDividend, "_selftest_fast_divmod: dividend ", n[i],
                " out of [0, 2^31)");
    const auto [q, r] = by.divmod(static_cast<int>(n[i]));
    o[i][0] = q;
    o[i][1] = r;
  }
  return out;
}

}  // namespace
}  // namespace cnnext_emu_selftest

TORCH_LIBRARY_FRAGMENT(cnnext_emu, m) {
  using namespace cnnext_emu_selftest;
  m.def("_selftest_indices(int[3] grid, int[3] block, int shared_bytes, int opt_in) -> Tensor",
        &launch_indices);
  m.def("_selftest_warp(Tensor x, int op, int mask, int arg, int width, int threads) -> Tensor", &warp);
  m.def("_selftest_barrier_reduce(Tensor pred, int kind) -> Tensor", &barrier_reduce);
  m.def("_selftest_atomics(int blocks, int threads) -> Tensor", &atomics);
  m.def("_selftest_race(int which, int threads, bool barrier) -> Tensor", &race);
  m.def("_selftest_broken(int mode, int blocks, int threads) -> ()", &broken);
  m.def("_selftest_mma(Tensor a, Tensor bt, Tensor c) -> Tensor", &mma);
  m.def("_selftest_mma_tf32(Tensor a, Tensor bt, Tensor c) -> Tensor", &mma_tf32);
  m.def("_selftest_fast_divmod(Tensor dividends, int divisor) -> Tensor", &fast_divmod);
  m.def("_selftest_async_copy(Tensor src) -> Tensor", &async_copy);
}
