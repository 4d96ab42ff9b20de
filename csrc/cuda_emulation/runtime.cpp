// The CUDA emulator's runtime: launch checks, fibers, the block scheduler, barriers and warp
// collectives (see emulator.h for what is emulated and what is not).
//
// Why one file of ~890 lines: fibers, scheduler, barriers and launch share the runtime's internal
// state (Pool, BlockRun, EmuThread), which no other file should see.
//
// A launch runs its blocks one after another on the calling OS thread (shuffled under the random
// schedule). A block's threads are fibers with stacks of their own; the scheduler resumes every
// ready fiber once per pass, in the schedule's order (forward, reverse or a fresh random
// permutation per pass), and each runs until it reaches a barrier, a warp collective, or exits.
// A warp collective completes when every lane its mask names has reached one; a block barrier
// completes when nothing is ready and every thread that has not exited waits at the same
// __syncthreads. Any other state with nothing ready is a deadlock and an error, as are exited
// threads that others wait for.
//
// Sanitizers: under ThreadSanitizer (CNNEXT_EMU_TSAN) every fiber is announced as a TSan fiber
// and switches carry no synchronisation of their own; a barrier or collective passes happens-
// before from each participant's arrival to every participant's resumption through a token that
// each participant releases into (see relay), so TSan sees CUDA's ordering within a block:
// accesses of two threads with no barrier or collective between them are reported. Blocks are
// ordered one after another (they reuse stacks and shared memory), so races between blocks are
// not. The runtime's own bookkeeping is hidden from TSan. Under AddressSanitizer the stack
// switches are announced (__sanitizer_start/finish_switch_fiber).
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_emulation/emulator.h"
#include "cuda_emulation/settings.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CNNEXT_EMU_ASAN 1
#endif

#if defined(CNNEXT_EMU_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

// A function left out of ThreadSanitizer's instrumentation entirely, its entry and exit included
// (clang's no_sanitize("thread") would keep those).
#if defined(__clang__)
#define CNNEXT_EMU_NOT_INSTRUMENTED __attribute__((disable_sanitizer_instrumentation))
#else
#define CNNEXT_EMU_NOT_INSTRUMENTED __attribute__((no_sanitize_thread))
#endif

// ---- Context switch (x86-64 System V) -----------------------------------------------------------
// cnnext_emu_switch_context(save, next): saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save and resumes the context
// whose stack pointer is `next`. A fresh fiber's stack is laid out as if it had been suspended
// here, with cnnext_emu_fiber_entry as the return address and the fiber's thread in r12.
extern "C" void cnnext_emu_switch_context(void** save, void* next);
extern "C" void cnnext_emu_fiber_entry();
asm(R"(
  .text
  .globl cnnext_emu_switch_context
  .hidden cnnext_emu_switch_context
  .type cnnext_emu_switch_context, @function
cnnext_emu_switch_context:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size cnnext_emu_switch_context, .-cnnext_emu_switch_context

  .globl cnnext_emu_fiber_entry
  .hidden cnnext_emu_fiber_entry
  .type cnnext_emu_fiber_entry, @function
cnnext_emu_fiber_entry:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  call cnnext_emu_fiber_main@PLT
  ud2
  .cfi_endproc
  .size cnnext_emu_fiber_entry, .-cnnext_emu_fiber_entry
)");

namespace cnnext_emu {

thread_local const ThreadView* current_view = nullptr;

namespace {

enum class State : uint8_t { kReady, kAtBarrier, kAtWarp, kExited, kFailed };

constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kDefaultSharedLimit = 48 * 1024;  // without cudaFuncAttributeMaxDynamicSharedMemorySize
constexpr size_t kMaxSharedOptIn = 227 * 1024;     // sm_90: 227 KiB per block with the opt-in

// One fiber stack: mmap'ed, with an inaccessible guard page below it so an overflow faults.
struct Stack {
  unsigned char* base = nullptr;  // lowest usable byte
  size_t size = 0;
};

Stack allocate_stack(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size = (size + page - 1) / page * page;
  void* region =
      mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(region != MAP_FAILED, "CUDA emulator: could not map a ", size, "-byte fiber stack");
  mprotect(region, page, PROT_NONE);
  return {static_cast<unsigned char*>(region) + page, size};
}

// One emulated CUDA thread.
struct EmuThread {
  ThreadView view;
  int index = 0, lane = 0, warp = 0;
  State state = State::kReady;
  void* sp = nullptr;  // saved stack pointer while suspended
  Stack stack;
  Site site{nullptr, 0};  // where it waits
  // At a block barrier.
  BarrierReduce reduce = BarrierReduce::kNone;
  int predicate = 0, barrier_result = 0;
  // At a warp collective.
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, warp_result = 0;
  int lane_arg = 0, width = kWarpSize;
  std::string failure;
#if defined(CNNEXT_EMU_TSAN)
  void* tsan_fiber = nullptr;
  char* resume_token = nullptr;  // acquired when resumed after a barrier or collective
#endif
#if defined(CNNEXT_EMU_ASAN)
  void* asan_fake_stack = nullptr;
#endif
};

const char* kSiteNames[] = {"__syncwarp",      "__shfl_sync",   "__shfl_up_sync", "__shfl_down_sync",
                            "__shfl_xor_sync", "__ballot_sync", "__any_sync",     "__all_sync"};
const char* op_name(WarpOp op) { return kSiteNames[static_cast<int>(op)]; }

std::string where(const Site& s) {
  if (s.file == nullptr) return "?";
  std::string file = s.file;
  const auto slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  return file + ":" + std::to_string(s.line);
}

// "0-63, 65" from a sorted list of thread indices.
std::string ranges(const std::vector<int>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i > 0) out << ", ";
    out << ids[i];
    if (j > i) out << "-" << ids[j];
    i = j + 1;
  }
  return out.str();
}

// "implicit_gemm_kernel<...>" out of "const char* kernel_name() [with auto kernel = ...]".
std::string short_kernel_name(const char* pretty) {
  std::string name = pretty == nullptr ? "kernel" : pretty;
  const auto at = name.find("kernel = ");
  if (at != std::string::npos) name = name.substr(at + 9, name.rfind(']') - at - 9);
  return name;
}

class BlockError : public std::exception {};

// The block being run on this OS thread, and the scheduler's context.
struct BlockRun {
  std::string kernel;
  dim3 block_idx;
  const std::function<void()>* body = nullptr;
  std::vector<EmuThread>* threads = nullptr;
  int count = 0;
  EmuThread* running = nullptr;
  void* scheduler_sp = nullptr;
  unsigned char* dynamic_shared = nullptr;
  size_t dynamic_bytes = 0;
  std::exception_ptr exception;
  std::string error;
#if defined(CNNEXT_EMU_TSAN)
  void* scheduler_fiber = nullptr;
  std::vector<char>* completion_tokens = nullptr;
  size_t next_token = 0;
  char* block_exit_token = nullptr;
#endif
#if defined(CNNEXT_EMU_ASAN)
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

thread_local BlockRun* active = nullptr;

// Stacks and thread records are kept per OS thread and reused by every launch.
struct Pool {
  std::vector<EmuThread> threads;
  std::vector<unsigned char> dynamic_shared;
#if defined(CNNEXT_EMU_TSAN)
  std::vector<char> completion_tokens = std::vector<char>(4096);
  char block_start_token = 0;  // released by the scheduler before each block, acquired by its fibers
  char block_exit_token = 0;
#endif
};
thread_local Pool pool;

// Hides the runtime's bookkeeping from ThreadSanitizer in the current fiber.
struct HideFromTsan {
#if defined(CNNEXT_EMU_TSAN)
  HideFromTsan() { __tsan_ignore_thread_begin(); }
  ~HideFromTsan() { __tsan_ignore_thread_end(); }
#endif
};

// ---- Switching between the scheduler and a fiber ----

// Runs `t` until it yields back.
void resume(BlockRun& run, EmuThread& t) {
  run.running = &t;
  current_view = &t.view;
#if defined(CNNEXT_EMU_TSAN)
  __tsan_switch_to_fiber(t.tsan_fiber, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#if defined(CNNEXT_EMU_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, t.stack.base, t.stack.size);
#endif
  cnnext_emu_switch_context(&run.scheduler_sp, t.sp);
#if defined(CNNEXT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  current_view = nullptr;
  run.running = nullptr;
}

// From a fiber: back to the scheduler, to be resumed later.
void yield_to_scheduler(BlockRun& run, EmuThread& t) {
#if defined(CNNEXT_EMU_TSAN)
  __tsan_switch_to_fiber(run.scheduler_fiber, 1);
#endif
#if defined(CNNEXT_EMU_ASAN)
  __sanitizer_start_switch_fiber(&t.asan_fake_stack, run.scheduler_stack_bottom, run.scheduler_stack_size);
#endif
  cnnext_emu_switch_context(&t.sp, run.scheduler_sp);
#if defined(CNNEXT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(t.asan_fake_stack, &run.scheduler_stack_bottom, &run.scheduler_stack_size);
#endif
}

// The last switch of a fiber's run through a block. Called with one HideFromTsan level active,
// which it ends, so that the TSan fiber leaves the block as it entered (it runs the thread of the
// same index in the next block); from there on only locals are touched. Not instrumented, like
// cnnext_emu_fiber_main: a function entry TSan recorded here would never be matched by its exit,
// and the fiber's shadow call stack would grow by one frame per block.
[[noreturn]] CNNEXT_EMU_NOT_INSTRUMENTED void finish_fiber(BlockRun& run, EmuThread& t) {
  void* scheduler_sp = run.scheduler_sp;
#if defined(CNNEXT_EMU_TSAN)
  void* scheduler_fiber = run.scheduler_fiber;
  char* token = run.block_exit_token;
  __tsan_ignore_thread_end();
  __tsan_release(token);
  __tsan_switch_to_fiber(scheduler_fiber, 1);
#endif
#if defined(CNNEXT_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, run.scheduler_stack_bottom, run.scheduler_stack_size);
#endif
  cnnext_emu_switch_context(&t.sp, scheduler_sp);
  __builtin_unreachable();
}

// Inside a fiber (within a HideFromTsan scope): record a failure and give control back for good.
[[noreturn]] void fail_in_fiber(const std::string& message) {
  BlockRun& run = *active;
  EmuThread& t = *run.running;
  t.failure = message;
  t.state = State::kFailed;
  finish_fiber(run, t);
}

// Lays out a fresh stack so that switching to it enters cnnext_emu_fiber_entry with r12 = t.
void prepare_fiber(EmuThread& t) {
  auto* top =
      reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(t.stack.base + t.stack.size) & ~uintptr_t{15});
  uint64_t* sp = top - 10;  // 16-byte aligned: 8 saved words, the return address, one pad word
  uint32_t mxcsr = 0;
  uint16_t fpu_control = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  sp[0] = uint64_t{mxcsr} | (uint64_t{fpu_control} << 32);
  sp[1] = 0;                               // r15
  sp[2] = 0;                               // r14
  sp[3] = 0;                               // r13
  sp[4] = reinterpret_cast<uint64_t>(&t);  // r12
  sp[5] = 0;                               // rbx
  sp[6] = 0;                               // rbp
  sp[7] = reinterpret_cast<uint64_t>(&cnnext_emu_fiber_entry);
  sp[8] = 0;
  t.sp = sp;
}

#if defined(CNNEXT_EMU_TSAN)
// Passes happens-before from every participant's arrival to every participant's resumption: each
// participant's TSan fiber (suspended since it arrived, so its clock is its arrival's) releases into
// one token, which each acquires when resumed. Only TSan's notion of the current fiber changes
// here, not the stack: a fiber per barrier that gathered the arrivals instead cost an mmap'ed,
// zeroed ThreadState each time (two per emulated mma).
void relay(BlockRun& run, const std::vector<EmuThread*>& participants) {
  char* token = &(*run.completion_tokens)[run.next_token++ % run.completion_tokens->size()];
  for (EmuThread* t : participants) {
    __tsan_switch_to_fiber(t->tsan_fiber, 1);
    __tsan_ignore_thread_end();  // the participant waits inside one HideFromTsan level
    __tsan_release(token);
    __tsan_ignore_thread_begin();
    t->resume_token = token;
  }
  __tsan_switch_to_fiber(run.scheduler_fiber, 1);
}
#endif

// ---- Waiting in a fiber ----

void arrive_and_wait(State state) {
  BlockRun& run = *active;
  EmuThread& t = *run.running;
  t.state = state;
  yield_to_scheduler(run, t);
#if defined(CNNEXT_EMU_TSAN)
  __tsan_ignore_thread_end();
  __tsan_acquire(t.resume_token);
  __tsan_ignore_thread_begin();
#endif
}

}  // namespace

int block_barrier(Site site, BarrierReduce reduce, int predicate) {
  HideFromTsan hide;
  TORCH_CHECK(active != nullptr && active->running != nullptr,
              "__syncthreads() called outside an emulated kernel");
  EmuThread& t = *active->running;
  t.site = site;
  t.reduce = reduce;
  t.predicate = predicate;
  arrive_and_wait(State::kAtBarrier);
  return t.barrier_result;
}

uint64_t warp_collective(Site site, WarpOp op, unsigned mask, uint64_t value, int lane_arg, int width) {
  HideFromTsan hide;
  TORCH_CHECK(active != nullptr && active->running != nullptr, op_name(op),
              " called outside an emulated kernel");
  BlockRun& run = *active;
  EmuThread& t = *run.running;
  std::ostringstream why;
  if ((mask >> t.lane & 1u) == 0) {
    why << op_name(op) << " at " << where(site) << ": the mask 0x" << std::hex << mask << std::dec
        << " does not name the calling lane " << t.lane;
    fail_in_fiber(why.str());
  }
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    why << op_name(op) << " at " << where(site) << ": width must be a power of 2 in [1, 32], got " << width;
    fail_in_fiber(why.str());
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane & 1u) == 0) continue;
    const int index = t.warp * kWarpSize + lane;
    if (index >= run.count || (*run.threads)[index].state == State::kExited) {
      why << op_name(op) << " at " << where(site) << " (thread " << t.index << "): the mask 0x" << std::hex
          << mask << std::dec << " names lane " << lane << ", which "
          << (index >= run.count ? "does not exist" : "has exited");
      fail_in_fiber(why.str());
    }
  }
  t.site = site;
  t.op = op;
  t.mask = mask;
  t.value = value;
  t.lane_arg = lane_arg;
  t.width = width;
  arrive_and_wait(State::kAtWarp);
  return t.warp_result;
}

unsigned active_mask() {
  HideFromTsan hide;
  TORCH_CHECK(active != nullptr && active->running != nullptr,
              "__activemask() called outside an emulated kernel");
  const EmuThread& t = *active->running;
  unsigned mask = 0;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int index = t.warp * kWarpSize + lane;
    if (index < active->count && (*active->threads)[index].state != State::kExited) mask |= 1u << lane;
  }
  return mask;
}

void trap(Site site, const char* what) {
  HideFromTsan hide;
  TORCH_CHECK(active != nullptr && active->running != nullptr, what, " called outside an emulated kernel");
  fail_in_fiber(std::string(what) + " at " + where(site));
}

unsigned char* dynamic_shared_base() {
  HideFromTsan hide;
  TORCH_CHECK(active != nullptr, "dynamic shared memory used outside an emulated kernel");
  return active->dynamic_shared;
}

size_t dynamic_shared_size() { return active == nullptr ? 0 : active->dynamic_bytes; }

}  // namespace cnnext_emu

// The first thing a fiber runs (entered from cnnext_emu_fiber_entry). Not instrumented (see
// finish_fiber).
extern "C" __attribute__((visibility("hidden"), used)) CNNEXT_EMU_NOT_INSTRUMENTED void cnnext_emu_fiber_main(
    void* thread) {
  using namespace cnnext_emu;
#if defined(CNNEXT_EMU_TSAN)
  // Everything the scheduler did before this block (earlier blocks and launches, the host's
  // writes) happens before this thread's first access.
  __tsan_acquire(&pool.block_start_token);
#endif
  auto* self = static_cast<EmuThread*>(thread);
  BlockRun& run = *active;
#if defined(CNNEXT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &run.scheduler_stack_bottom, &run.scheduler_stack_size);
#endif
  try {
    (*run.body)();
  } catch (...) {
    HideFromTsan hide;
    run.exception = std::current_exception();
    self->state = State::kFailed;
    finish_fiber(run, *self);
  }
  HideFromTsan hide;
  self->state = State::kExited;
  finish_fiber(run, *self);
}

namespace cnnext_emu {
namespace {

// ---- The scheduler ----

[[noreturn]] void block_error(const BlockRun& run, const std::string& message) {
  TORCH_CHECK(false, "CUDA emulator: ", run.kernel, " block (", run.block_idx.x, ", ", run.block_idx.y, ", ",
              run.block_idx.z, "): ", message);
  __builtin_unreachable();
}

void check_fiber(BlockRun& run, EmuThread& t) {
  if (t.state != State::kFailed) return;
  if (run.exception) std::rethrow_exception(run.exception);
  block_error(run, "thread " + std::to_string(t.index) + ": " + t.failure);
}

// The result of warp collective `op` for `lane`, from the lanes' recorded arrivals.
uint64_t collective_result(const BlockRun& run, const EmuThread& t) {
  const auto& threads = *run.threads;
  const int base = t.warp * kWarpSize;
  auto value_of = [&](int lane) { return threads[base + lane].value; };
  uint64_t bits = 0;
  switch (t.op) {
    case WarpOp::kSync:
      return 0;
    case WarpOp::kBallot:
    case WarpOp::kAny:
    case WarpOp::kAll: {
      for (int lane = 0; lane < kWarpSize; ++lane) {
        if ((t.mask >> lane & 1u) && value_of(lane)) bits |= uint64_t{1} << lane;
      }
      if (t.op == WarpOp::kBallot) return bits;
      if (t.op == WarpOp::kAny) return bits != 0;
      return bits == t.mask;
    }
    default:
      break;
  }
  const int width = t.width, segment = t.lane & ~(width - 1), in_segment = t.lane & (width - 1);
  int source = t.lane;
  switch (t.op) {
    case WarpOp::kShuffleIndex:
      source = segment + (t.lane_arg & (width - 1));
      break;
    case WarpOp::kShuffleUp:
      if (in_segment - t.lane_arg >= 0) source = t.lane - t.lane_arg;
      break;
    case WarpOp::kShuffleDown:
      if (in_segment + t.lane_arg < width) source = t.lane + t.lane_arg;
      break;
    case WarpOp::kShuffleXor: {
      const int target = t.lane ^ t.lane_arg;
      if (target >= 0 && target < kWarpSize && target <= segment + width - 1) source = target;
      break;
    }
    default:
      break;
  }
  if ((t.mask >> source & 1u) == 0) {
    std::ostringstream why;
    why << "thread " << t.index << ": " << op_name(t.op) << " at " << where(t.site) << " reads lane "
        << source << ", which the mask 0x" << std::hex << t.mask << " does not name (undefined on a GPU)";
    block_error(run, why.str());
  }
  return value_of(source);
}

// If every lane named by t's mask waits at a collective, checks they agree and completes it.
bool try_complete_collective(BlockRun& run, EmuThread& t, std::vector<int>& ready) {
  auto& threads = *run.threads;
  const int base = t.warp * kWarpSize;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if ((t.mask >> lane & 1u) && threads[base + lane].state != State::kAtWarp) return false;
  }
  std::vector<EmuThread*> group;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (t.mask >> lane & 1u) group.push_back(&threads[base + lane]);
  }
  for (EmuThread* other : group) {
    if (other->op != t.op || other->mask != t.mask) {
      std::ostringstream why;
      why << "warp " << t.warp << ": lane " << t.lane << " waits at " << op_name(t.op) << " ("
          << where(t.site) << ", mask 0x" << std::hex << t.mask << ") while lane " << std::dec << other->lane
          << " waits at " << op_name(other->op) << " (" << where(other->site) << ", mask 0x" << std::hex
          << other->mask << "): the lanes of a mask must all call the same intrinsic with the same mask";
      block_error(run, why.str());
    }
  }
  std::vector<uint64_t> results;
  for (EmuThread* other : group) results.push_back(collective_result(run, *other));
#if defined(CNNEXT_EMU_TSAN)
  relay(run, group);
#endif
  for (size_t i = 0; i < group.size(); ++i) {
    group[i]->warp_result = results[i];
    group[i]->state = State::kReady;
    ready.push_back(group[i]->index);
  }
  return true;
}

// Nothing is ready: either every live thread waits at one __syncthreads (release them all) or
// the block can never finish (an error naming who waits where).
void complete_barrier_or_fail(BlockRun& run, std::vector<int>& ready) {
  auto& threads = *run.threads;
  std::vector<int> exited, at_barrier, at_warp;
  for (int i = 0; i < run.count; ++i) {
    switch (threads[i].state) {
      case State::kExited:
        exited.push_back(i);
        break;
      case State::kAtBarrier:
        at_barrier.push_back(i);
        break;
      default:
        at_warp.push_back(i);
        break;
    }
  }
  std::ostringstream why;
  if (!at_warp.empty()) {
    const EmuThread& w = threads[at_warp.front()];
    why << "deadlock: threads " << ranges(at_warp) << " wait at warp collectives (first: " << op_name(w.op)
        << " at " << where(w.site) << ", mask 0x" << std::hex << w.mask << std::dec << ")";
    if (!at_barrier.empty()) {
      why << " while threads " << ranges(at_barrier) << " wait at __syncthreads ("
          << where(threads[at_barrier[0]].site) << ")";
    }
    if (!exited.empty()) why << "; threads " << ranges(exited) << " have exited";
    block_error(run, why.str());
  }
  if (!exited.empty()) {
    why << "threads " << ranges(exited) << " exited while threads " << ranges(at_barrier)
        << " wait at __syncthreads (" << where(threads[at_barrier[0]].site)
        << "): a barrier that some threads never reach (undefined behaviour on a GPU)";
    block_error(run, why.str());
  }
  const EmuThread& first = threads[at_barrier[0]];
  auto same_site = [&](int i) {
    const Site& s = threads[i].site;
    return s.line == first.site.line &&
           (s.file == first.site.file || std::strcmp(s.file, first.site.file) == 0);
  };
  if (!std::all_of(at_barrier.begin(), at_barrier.end(), same_site)) {
    std::map<std::string, std::vector<int>> by_site;
    for (int i : at_barrier) by_site[where(threads[i].site)].push_back(i);
    why << "divergent __syncthreads: ";
    bool more = false;
    for (const auto& [site, ids] : by_site) {
      why << (more ? "; " : "") << "threads " << ranges(ids) << " wait at " << site;
      more = true;
    }
    block_error(run, why.str());
  }
  int count = 0;
  for (int i : at_barrier) count += threads[i].predicate;
  int result = 0;
  switch (first.reduce) {
    case BarrierReduce::kCount:
      result = count;
      break;
    case BarrierReduce::kAnd:
      result = count == static_cast<int>(at_barrier.size());
      break;
    case BarrierReduce::kOr:
      result = count > 0;
      break;
    case BarrierReduce::kNone:
      break;
  }
#if defined(CNNEXT_EMU_TSAN)
  std::vector<EmuThread*> group;
  for (int i : at_barrier) group.push_back(&threads[i]);
  relay(run, group);
#endif
  for (int i : at_barrier) {
    threads[i].barrier_result = result;
    threads[i].state = State::kReady;
    ready.push_back(i);
  }
}

void order(std::vector<int>& ids, Schedule schedule, std::mt19937_64& rng) {
  switch (schedule) {
    case Schedule::kForward:
      std::sort(ids.begin(), ids.end());
      break;
    case Schedule::kReverse:
      std::sort(ids.begin(), ids.end(), std::greater<int>());
      break;
    case Schedule::kRandom:
      std::shuffle(ids.begin(), ids.end(), rng);
      break;
  }
}

void run_block(BlockRun& run, Schedule schedule, std::mt19937_64& rng) {
  auto& threads = *run.threads;
  std::vector<int> ready(run.count), next;
  std::iota(ready.begin(), ready.end(), 0);
  while (true) {
    if (!ready.empty()) {
      order(ready, schedule, rng);
      next.clear();
      for (int i : ready) {
        EmuThread& t = threads[i];
        resume(run, t);
        check_fiber(run, t);
        if (t.state == State::kAtWarp) try_complete_collective(run, t, next);
        if (t.state == State::kExited) {
          // A collective waiting for this lane can never complete.
          for (int lane = 0; lane < kWarpSize; ++lane) {
            const int other = t.warp * kWarpSize + lane;
            if (other < run.count && threads[other].state == State::kAtWarp &&
                (threads[other].mask >> t.lane & 1u)) {
              std::ostringstream why;
              why << "thread " << t.index << " exited while lane " << lane << " waits for it at "
                  << op_name(threads[other].op) << " (" << where(threads[other].site) << ", mask 0x"
                  << std::hex << threads[other].mask << ")";
              block_error(run, why.str());
            }
          }
        }
      }
      ready.swap(next);
      continue;
    }
    if (std::all_of(threads.begin(), threads.begin() + run.count,
                    [](const EmuThread& t) { return t.state == State::kExited; })) {
      return;
    }
    complete_barrier_or_fail(run, ready);
  }
}

std::mutex attribute_mutex;
std::map<const void*, size_t>& dynamic_shared_opt_ins() {
  static std::map<const void*, size_t> opt_ins;
  return opt_ins;
}

[[noreturn]] void launch_error(const std::string& kernel, const std::string& message) {
  TORCH_CHECK(false, "CUDA emulator: launching ", kernel, " would fail on a GPU: ", message);
  __builtin_unreachable();
}

void check_launch(const LaunchRequest& request, const std::string& kernel) {
  const dim3 g = request.grid, b = request.block;
  const uint64_t threads = uint64_t{b.x} * b.y * b.z;
  auto dims = [](const char* what, dim3 d) {
    return std::string(what) + " (" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " +
           std::to_string(d.z) + ")";
  };
  if (g.x == 0 || g.y == 0 || g.z == 0)
    launch_error(kernel, "empty " + dims("grid", g) + " (cudaErrorInvalidConfiguration)");
  if (b.x == 0 || b.y == 0 || b.z == 0)
    launch_error(kernel, "empty " + dims("block", b) + " (cudaErrorInvalidConfiguration)");
  if (threads > 1024) {
    launch_error(kernel,
                 std::to_string(threads) + " threads per block, more than 1024 (" + dims("block", b) + ")");
  }
  if (b.x > 1024 || b.y > 1024 || b.z > 64) {
    launch_error(kernel, dims("block", b) + " exceeds the per-axis limits (1024, 1024, 64)");
  }
  if (g.x > 2147483647u) launch_error(kernel, "grid.x = " + std::to_string(g.x) + " exceeds 2^31 - 1");
  if (g.y > 65535) launch_error(kernel, "grid.y = " + std::to_string(g.y) + " exceeds 65535");
  if (g.z > 65535) launch_error(kernel, "grid.z = " + std::to_string(g.z) + " exceeds 65535");
  size_t limit = kDefaultSharedLimit;
  {
    std::lock_guard<std::mutex> lock(attribute_mutex);
    const auto it = dynamic_shared_opt_ins().find(request.kernel);
    if (it != dynamic_shared_opt_ins().end()) limit = std::max(limit, it->second);
  }
  if (request.dynamic_shared_bytes > limit) {
    launch_error(kernel, std::to_string(request.dynamic_shared_bytes) +
                             " bytes of dynamic shared memory, more than " + std::to_string(limit) +
                             (limit == kDefaultSharedLimit
                                  ? " (48 KiB without cudaFuncAttributeMaxDynamicSharedMemorySize)"
                                  : " (the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize)"));
  }
}

}  // namespace

void set_max_dynamic_shared(const void* kernel, const char* name, size_t bytes) {
  TORCH_CHECK(bytes <= kMaxSharedOptIn, "CUDA emulator: cudaFuncSetAttribute(", short_kernel_name(name),
              ", cudaFuncAttributeMaxDynamicSharedMemorySize, ", bytes, ") would fail on a GPU: at most ",
              kMaxSharedOptIn, " bytes per block");
  std::lock_guard<std::mutex> lock(attribute_mutex);
  dynamic_shared_opt_ins()[kernel] = bytes;
}

int multiprocessor_count() { return settings().sm_count; }

namespace {
std::mutex launched_mutex;
std::set<std::string>& launched() {
  static std::set<std::string> launches;
  return launches;
}
}  // namespace

std::vector<std::string> launched_kernels() {
  std::lock_guard<std::mutex> lock(launched_mutex);
  return {launched().begin(), launched().end()};
}

void forget_launched_kernels() {
  std::lock_guard<std::mutex> lock(launched_mutex);
  launched().clear();
}

namespace {

// The block's `count` threads: stacks of the configured size, their indices and views.
void prepare_threads(const LaunchRequest& request, const Settings& config, int count) {
  auto& threads = pool.threads;
  if (static_cast<int>(threads.size()) < count) threads.resize(count);
  for (int i = 0; i < count; ++i) {
    EmuThread& t = threads[i];
    if (t.stack.size != config.stack_bytes) {
      if (t.stack.base != nullptr)
        munmap(t.stack.base - sysconf(_SC_PAGESIZE), t.stack.size + sysconf(_SC_PAGESIZE));
      t.stack = allocate_stack(config.stack_bytes);
    }
    t.index = i;
    t.lane = i % kWarpSize;
    t.warp = i / kWarpSize;
    t.view.thread_idx = {i % request.block.x, (i / request.block.x) % request.block.y,
                         i / (request.block.x * request.block.y)};
    t.view.block_dim = request.block;
    t.view.grid_dim = request.grid;
  }
}

// The launch's dynamic shared memory, 16-byte aligned as on a GPU.
unsigned char* prepare_dynamic_shared(size_t bytes) {
  pool.dynamic_shared.resize(std::max<size_t>(bytes, 1) + 16);
  unsigned char* shared = pool.dynamic_shared.data();
  return shared + (16 - reinterpret_cast<uintptr_t>(shared) % 16) % 16;
}

// The order the grid's blocks run in: forward, or shuffled under the random schedule.
std::vector<uint64_t> block_order(dim3 grid, Schedule schedule, std::mt19937_64& rng) {
  std::vector<uint64_t> order(uint64_t{grid.x} * grid.y * grid.z);
  std::iota(order.begin(), order.end(), uint64_t{0});
  if (schedule == Schedule::kRandom) std::shuffle(order.begin(), order.end(), rng);
  return order;
}

}  // namespace

void launch(const LaunchRequest& request, const std::function<void()>& body) {
  HideFromTsan hide;  // the scheduler's own accesses; the fibers are tracked
  const std::string kernel = short_kernel_name(request.name);
  check_launch(request, kernel);
  {
    std::lock_guard<std::mutex> lock(launched_mutex);
    launched().insert(kernel + "\t" +
                      std::to_string(uint64_t{request.block.x} * request.block.y * request.block.z) + "\t" +
                      std::to_string(request.dynamic_shared_bytes));
  }
  TORCH_CHECK(active == nullptr, "CUDA emulator: ", kernel, " launched from inside an emulated kernel");
  const Settings config = settings();
  std::mt19937_64& rng = schedule_rng();

  const int count = static_cast<int>(request.block.x * request.block.y * request.block.z);
  auto& threads = pool.threads;
  prepare_threads(request, config, count);
  unsigned char* shared = prepare_dynamic_shared(request.dynamic_shared_bytes);
  const std::vector<uint64_t> order = block_order(request.grid, config.schedule, rng);

  BlockRun run;
  run.kernel = kernel;
  run.body = &body;
  run.threads = &threads;
  run.count = count;
  run.dynamic_shared = shared;
  run.dynamic_bytes = request.dynamic_shared_bytes;
#if defined(CNNEXT_EMU_TSAN)
  run.scheduler_fiber = __tsan_get_current_fiber();
  run.completion_tokens = &pool.completion_tokens;
  run.block_exit_token = &pool.block_exit_token;
#endif
  struct Deactivate {
    ~Deactivate() {
      active = nullptr;
      current_view = nullptr;
    }
  } deactivate;
  active = &run;
  for (const uint64_t b : order) {
    const dim3 block_idx(static_cast<unsigned>(b % request.grid.x),
                         static_cast<unsigned>((b / request.grid.x) % request.grid.y),
                         static_cast<unsigned>(b / (uint64_t{request.grid.x} * request.grid.y)));
    run.block_idx = block_idx;
    std::memset(shared, 0xff, request.dynamic_shared_bytes);  // NaN in every floating-point type
    for (int i = 0; i < count; ++i) {
      EmuThread& t = threads[i];
      t.state = State::kReady;
      t.view.block_idx = {block_idx.x, block_idx.y, block_idx.z};
      t.failure.clear();
      prepare_fiber(t);
#if defined(CNNEXT_EMU_TSAN)
      // One TSan fiber per thread index, kept from block to block: creating one maps and zeroes a
      // ThreadState and a shadow stack, which took most of a sanitizer pass's time. Reuse loses
      // nothing, since blocks are ordered anyway (below).
      if (t.tsan_fiber == nullptr) t.tsan_fiber = __tsan_create_fiber(0);
#endif
    }
#if defined(CNNEXT_EMU_TSAN)
    __tsan_release(&pool.block_start_token);
    // A failed block leaves fibers suspended mid-kernel (inside HideFromTsan levels, with frames on
    // their shadow stacks): they are destroyed, and the next launch creates fresh ones.
    struct DestroyFibersOnFailure {
      std::vector<EmuThread>& threads;
      int count;
      bool block_finished = false;
      ~DestroyFibersOnFailure() {
        if (block_finished) return;
        for (int i = 0; i < count; ++i) {
          __tsan_destroy_fiber(threads[i].tsan_fiber);
          threads[i].tsan_fiber = nullptr;
        }
      }
    } destroy{threads, count};
#endif
    run_block(run, config.schedule, rng);
#if defined(CNNEXT_EMU_TSAN)
    destroy.block_finished = true;
    // Blocks run one after another and reuse stacks and shared memory: TSan sees them ordered too
    // (races between blocks are out of the emulator's sight), and the next launch after this one.
    __tsan_acquire(run.block_exit_token);
#endif
  }
}

}  // namespace cnnext_emu
