// cuda_emu runtime: runs translated CUDA kernels on the CPU, and fakes the CUDA runtime API that
// cuda/*.cu calls (devices, memory, copies, streams, events). See tools/cuda_emu/README.md.
//
// Kernels: emu::launch_impl checks the launch configuration like a real launch (an error is kept
// for cudaGetLastError and nothing runs), then runs the blocks one after another. A block's threads
// are fibers on private stacks, switched by the small x86-64 routine below, and scheduled round-robin
// (forward or, with CONVNET_EMU_ORDER=reverse, backward): each runs until it reaches __syncthreads(),
// a warp exchange (__shfl_*_sync / __syncwarp) or returns. A block barrier opens when every thread
// waits at it; a warp exchange when every lane of the warp waits. Strict checks, each an error that
// names the kernel, the block and the source line (a std::runtime_error: RuntimeError in Python):
//   * __syncthreads reached while other threads of the block have returned, or at different lines;
//   * deadlock (threads waiting at different kinds of barrier);
//   * a warp exchange whose mask omits a lane of the warp, that reads a lane that does not exist,
//     or that happens after some lanes of the warp returned;
//   * a kernel pointer argument that is not device memory of some emulated device;
//   * shared memory above the limits (48 KB static, 227 KB total), misaligned __ldg.
// Memory: device memory is host heap memory, 256-byte aligned, filled with a NaN pattern
// (0x7FBADBAD) when allocated. Built with -fsanitize=address (build.sh does), every access past
// the end of an allocation, of a shared array or of a tensor inside the caching allocator's rounded
// block (on_device_alloc poisons the tail) stops the process with an AddressSanitizer report.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "cuda_pipeline_primitives.h"
#undef warpSize  // the built-in variable; here it is a cudaDeviceProp field

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// --- fiber switch (x86-64 System V): saves callee-saved registers and the FP control words on the
// old stack, stores its stack pointer in *save, and resumes the context whose stack pointer is next.
extern "C" void emu_ctx_switch(void** save, void* next);
__asm__(
    ".text\n"
    ".globl emu_ctx_switch\n"
    ".type emu_ctx_switch,@function\n"
    "emu_ctx_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_ctx_switch,.-emu_ctx_switch\n");

struct CUstream_st {
  int device;
};
struct CUevent_st {
  int device;
};

namespace emu {

Thread* g_cur = nullptr;
uint3 g_blockIdx, g_blockDim, g_gridDim;

namespace {

std::string env_str(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atol(v) : fallback;
}

constexpr uint32_t kPoison = 0x7FBADBADu;  // a NaN as float32, 2142952365 as int32
void fill_poison(void* p, size_t bytes) {
  uint32_t* w = static_cast<uint32_t*>(p);
  for (size_t i = 0; i < bytes / 4; ++i) w[i] = kPoison;
  std::memset(static_cast<char*>(p) + bytes / 4 * 4, 0xBD, bytes % 4);
}

// ---------------------------------------------------------------------------------------------------
// block execution

enum class St { Run, Sync, Warp, Done };

struct PendingCopy {  // a cp.async (__pipeline_memcpy_async) not yet waited for
  void* dst;
  const void* src;
  size_t size, zfill;
  int batch;  // the number of commits before it: its batch
};

struct Fiber {
  Thread pub;
  std::vector<PendingCopy> copies;
  int commits = 0;
  St st = St::Run;
  const char* file = "";
  int line = 0;
  int warp_gen = 0;
  void* sp = nullptr;
  char* stack = nullptr;  // lowest usable address
#if EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct BlockError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

size_t g_stack_bytes = 0;
std::vector<char*> g_stacks;  // reused by every block
std::vector<Fiber> g_fibers;
std::vector<uint64_t> g_warp_buf;  // [warp][2][32]
void* g_sched_sp = nullptr;
Fiber* g_fcur = nullptr;
const std::function<void()>* g_body = nullptr;
std::string g_fiber_error;  // set by a fiber that failed a check, read by the scheduler
bool g_stacks_dirty = false;
#if EMU_ASAN
void* g_main_fake = nullptr;
const void* g_main_bottom = nullptr;
size_t g_main_size = 0;
#endif

// dynamic shared memory of the running launch, static shared arrays touched in the running block
char* g_dyn_smem = nullptr;
size_t g_dyn_smem_bytes = 0;
uint64_t g_block_epoch = 0;
std::map<void*, uint64_t> g_shared_epoch;
size_t g_static_smem = 0;

void ensure_stacks(int n) {
  if (!g_stack_bytes) g_stack_bytes = static_cast<size_t>(env_long("CONVNET_EMU_STACK_KB", 256)) << 10;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (static_cast<int>(g_stacks.size()) < n) {
    void* m = mmap(nullptr, g_stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map fiber stacks");
    mprotect(m, page, PROT_NONE);  // a fiber that overflows its stack faults here
    g_stacks.push_back(static_cast<char*>(m) + page);
  }
}

[[noreturn]] void fiber_main();

void yield_to_scheduler(bool dying) {
  Fiber* f = g_fcur;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, g_main_bottom, g_main_size);
#endif
  (void)dying;
  emu_ctx_switch(&f->sp, g_sched_sp);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void perform_copies(Fiber& f, int below_batch) {  // the queued copies of batches < below_batch
  size_t kept = 0;
  for (const PendingCopy& c : f.copies) {
    if (c.batch < below_batch) {
      if (c.size > c.zfill) std::memcpy(c.dst, c.src, c.size - c.zfill);
      std::memset(static_cast<char*>(c.dst) + (c.size - c.zfill), 0, c.zfill);
    } else {
      f.copies[kept++] = c;
    }
  }
  f.copies.resize(kept);
}

void fiber_main() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_bottom, &g_main_size);
#endif
  (*g_body)();
  perform_copies(*g_fcur, 1 << 30);  // copies never waited for still land before the block ends
  g_fcur->st = St::Done;
  yield_to_scheduler(true);
  __builtin_trap();  // a finished fiber is never resumed
}

void init_fiber(Fiber& f, char* stack) {
  f.stack = stack;
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + g_stack_bytes) & ~uintptr_t{15};
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                              // fiber_main's (never used) return address
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);         // where emu_ctx_switch's ret lands
  for (int i = 0; i < 6; ++i) *--sp = 0;                  // rbp rbx r12 r13 r14 r15
  *--sp = 0x037F00001F80ull;                              // mxcsr (low), x87 control word (high)
  f.sp = sp;
}

void resume(Fiber& f) {
  g_fcur = &f;
  g_cur = &f.pub;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&g_main_fake, f.stack, g_stack_bytes);
#endif
  emu_ctx_switch(&g_sched_sp, f.sp);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(g_main_fake, nullptr, nullptr);
#endif
}

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.pub.tid.x << "," << f.pub.tid.y << "," << f.pub.tid.z << ")";
  return s.str();
}
std::string at(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

[[noreturn]] void fiber_fail(const std::string& what) {
  g_fiber_error = where(*g_fcur) + ": " + what;
  g_stacks_dirty = true;
  yield_to_scheduler(false);  // the scheduler abandons the block; never resumed
  __builtin_trap();
}

bool g_reverse = false;

void run_block(int nthreads) {
  const int warps = (nthreads + 31) / 32;
  g_fibers.assign(nthreads, Fiber());
  g_warp_buf.assign(static_cast<size_t>(warps) * 64, 0);
  ensure_stacks(nthreads);
#if EMU_ASAN
  if (g_stacks_dirty)
    for (int i = 0; i < nthreads; ++i) __asan_unpoison_memory_region(g_stacks[i], g_stack_bytes);
#endif
  g_stacks_dirty = false;
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = g_fibers[i];
    f.pub.linear = i;
    f.pub.warp = i / 32;
    f.pub.lane = i % 32;
    f.pub.tid = uint3{i % g_blockDim.x, (i / g_blockDim.x) % g_blockDim.y, i / (g_blockDim.x * g_blockDim.y)};
    init_fiber(f, g_stacks[i]);
  }
  ++g_block_epoch;
  g_static_smem = 0;
  if (g_dyn_smem) fill_poison(g_dyn_smem, g_dyn_smem_bytes);

  for (;;) {
    for (int k = 0; k < nthreads; ++k) {
      Fiber& f = g_fibers[g_reverse ? nthreads - 1 - k : k];
      if (f.st != St::Run) continue;
      resume(f);
      if (!g_fiber_error.empty()) {
        std::string e;
        e.swap(g_fiber_error);
        g_stacks_dirty = true;
        throw BlockError(e);
      }
    }
    // Everyone is waiting or done: open the warp exchanges that are complete.
    bool released = false;
    for (int w = 0; w < warps; ++w) {
      const int lo = w * 32, hi = std::min(nthreads, lo + 32);
      int waiting = 0, done = 0, live = 0;
      const Fiber* first = nullptr;
      for (int i = lo; i < hi; ++i) {
        const Fiber& f = g_fibers[i];
        if (f.st == St::Done) { ++done; continue; }
        ++live;
        if (f.st == St::Warp) { ++waiting; if (!first) first = &f; }
      }
      if (!waiting || waiting != live) continue;
      if (done) {
        g_stacks_dirty = true;
        throw BlockError(where(*first) + ": warp-synchronous operation at " + at(*first) + " after " +
                         std::to_string(done) + " lane(s) of warp " + std::to_string(w) + " returned");
      }
      for (int i = lo; i < hi; ++i) {
        if (g_fibers[i].line != first->line || std::strcmp(g_fibers[i].file, first->file) != 0) {
          g_stacks_dirty = true;
          throw BlockError("lanes of warp " + std::to_string(w) + " meet at different warp operations: " +
                           at(*first) + " and " + at(g_fibers[i]));
        }
        g_fibers[i].st = St::Run;
      }
      released = true;
    }
    if (released) continue;
    int sync = 0, done = 0;
    const Fiber *first_sync = nullptr, *first_done = nullptr, *first_warp = nullptr;
    for (const Fiber& f : g_fibers) {
      if (f.st == St::Sync) { ++sync; if (!first_sync) first_sync = &f; }
      else if (f.st == St::Done) { ++done; if (!first_done) first_done = &f; }
      else if (f.st == St::Warp && !first_warp) first_warp = &f;
    }
    if (done == nthreads) return;
    g_stacks_dirty = true;
    if (first_warp)
      throw BlockError("deadlock: " + where(*first_warp) + " waits at the warp operation at " + at(*first_warp) +
                       (first_sync ? ", " + where(*first_sync) + " at __syncthreads " + at(*first_sync) : "") +
                       (first_done ? ", " + where(*first_done) + " returned" : ""));
    if (done)
      throw BlockError("__syncthreads at " + at(*first_sync) + " reached by " + std::to_string(sync) +
                       " thread(s) after " + std::to_string(done) + " thread(s) of the block returned (e.g. " +
                       where(*first_done) + "); an early return before a barrier is undefined behaviour");
    for (const Fiber& f : g_fibers)
      if (f.line != first_sync->line || std::strcmp(f.file, first_sync->file) != 0)
        throw BlockError("threads of the block wait at different __syncthreads: " + where(*first_sync) + " at " +
                         at(*first_sync) + ", " + where(f) + " at " + at(f));
    g_stacks_dirty = false;
    for (Fiber& f : g_fibers) f.st = St::Run;
  }
}

// ---------------------------------------------------------------------------------------------------
// memory bookkeeping

struct Alloc {
  size_t bytes;
  int device;  // -1: pinned host memory
};
std::mutex g_mem_mutex;
std::map<uintptr_t, Alloc> g_allocs;
std::vector<size_t> g_used;
std::set<std::pair<int, int>> g_peer_enabled;

int device_count_() {
  static const int n = static_cast<int>(env_long("CONVNET_EMU_DEVICES", 2));
  return n;
}
size_t device_total() {
  static const size_t t = static_cast<size_t>(env_long("CONVNET_EMU_MEM_GB", 80)) << 30;
  return t;
}

// The allocation containing p (or ending at p when end_ok), or nullptr.
const Alloc* find_alloc(const void* p, uintptr_t* base = nullptr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  if (a >= it->first + std::max<size_t>(it->second.bytes, 1)) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;
cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}

std::mutex g_launch_mutex;
std::map<const void*, int> g_max_dynamic_smem;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// called from kernels

void syncthreads(const char* file, int line) {
  g_fcur->st = St::Sync;
  g_fcur->file = file;
  g_fcur->line = line;
  yield_to_scheduler(false);
}

static void warp_wait(unsigned mask, const char* file, int line) {
  Fiber& f = *g_fcur;
  const int nthreads = static_cast<int>(g_fibers.size());
  const int present = std::min(32, nthreads - f.pub.warp * 32);
  const unsigned expected = present == 32 ? 0xffffffffu : ((1u << present) - 1);
  if ((mask & expected) != expected) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "warp operation at %s:%d with mask 0x%08x, but the warp has lanes 0x%08x",
                  file, line, mask, expected);
    fiber_fail(buf);
  }
  f.st = St::Warp;
  f.file = file;
  f.line = line;
  yield_to_scheduler(false);
}

void syncwarp(unsigned mask, const char* file, int line) { warp_wait(mask, file, line); }

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src, const char* file, int line) {
  Fiber& f = *g_fcur;
  const int nthreads = static_cast<int>(g_fibers.size());
  const int present = std::min(32, nthreads - f.pub.warp * 32);
  const int gen = f.warp_gen++ & 1;  // two buffers: a fast lane's next exchange cannot clobber this one
  uint64_t* buf = &g_warp_buf[(static_cast<size_t>(f.pub.warp) * 2 + gen) * 32];
  buf[f.pub.lane] = bits;
  warp_wait(mask, file, line);
  if (src < 0) return bits;
  if (src >= present)
    fiber_fail("shuffle at " + std::string(file) + ":" + std::to_string(line) + " reads lane " + std::to_string(src) +
               ", which does not exist in a warp of " + std::to_string(present) + " lanes (undefined value)");
  return buf[src];
}

void* dynamic_shared() { return g_dyn_smem; }

void pipeline_copy(void* dst, const void* src, size_t size, size_t zfill) {
  if (size != 4 && size != 8 && size != 16)
    fiber_fail("__pipeline_memcpy_async of " + std::to_string(size) + " bytes (4, 8 or 16 only)");
  if (zfill > size) fiber_fail("__pipeline_memcpy_async: zfill " + std::to_string(zfill) + " > size " + std::to_string(size));
  if (reinterpret_cast<uintptr_t>(dst) % size || (zfill < size && reinterpret_cast<uintptr_t>(src) % size))
    fiber_fail("__pipeline_memcpy_async: misaligned address (" + std::to_string(size) + "-byte copy)");
  g_fcur->copies.push_back(PendingCopy{dst, zfill < size ? src : nullptr, size, zfill, g_fcur->commits});
}

void pipeline_commit() { ++g_fcur->commits; }

void pipeline_wait_prior(size_t prior) {
  perform_copies(*g_fcur, g_fcur->commits - static_cast<int>(prior));
}

void shared_touch(void* ptr, size_t bytes) {
  uint64_t& epoch = g_shared_epoch[ptr];
  if (epoch == g_block_epoch) return;
  epoch = g_block_epoch;
  fill_poison(ptr, bytes);  // shared memory starts as garbage on a GPU
  g_static_smem += bytes;
  if (g_static_smem > 48 * 1024)
    fiber_fail("static shared memory " + std::to_string(g_static_smem) + " bytes exceeds 48 KB");
  if (g_static_smem + g_dyn_smem_bytes > 227 * 1024)
    fiber_fail("static + dynamic shared memory exceeds 227 KB");
}

void kernel_error(const char* what) {
  if (g_fcur) fiber_fail(what);
  throw std::runtime_error(std::string("cuda_emu: ") + what);
}

void on_device_alloc(void* ptr, size_t bytes, size_t rounded) {
#if EMU_ASAN
  __asan_unpoison_memory_region(ptr, bytes);
  if (rounded > bytes) __asan_poison_memory_region(static_cast<char*>(ptr) + bytes, rounded - bytes);
#else
  (void)rounded;
#endif
  fill_poison(ptr, bytes);
}

void on_device_free(void* ptr, size_t bytes, size_t rounded) {
  (void)bytes;
#if EMU_ASAN
  __asan_poison_memory_region(ptr, rounded);  // cached: any use before it is handed out again is a bug
#else
  (void)ptr;
  (void)rounded;
#endif
}

void launch_impl(const char* name, const void* func, const Cfg& cfg, const std::function<void()>& body) {
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  auto config_error = [&](cudaError_t e, const std::string& why) {
    if (env_long("CONVNET_EMU_VERBOSE", 0)) std::fprintf(stderr, "cuda_emu: launch of %s: %s\n", name, why.c_str());
    t_last_error = e;
  };
  if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return config_error(cudaErrorInvalidConfiguration, "bad block size");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    return config_error(cudaErrorInvalidConfiguration, "bad grid size");
  int max_dyn = 48 * 1024;
  {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_max_dynamic_smem.find(func);
    if (it != g_max_dynamic_smem.end()) max_dyn = it->second;
  }
  if (cfg.smem > static_cast<size_t>(max_dyn)) return config_error(cudaErrorInvalidValue, "too much dynamic shared memory");
  if (cfg.stream) {
    if (cfg.stream->device != t_device) return config_error(cudaErrorInvalidResourceHandle, "stream of another device");
  }

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  static const bool reverse = env_str("CONVNET_EMU_ORDER", "forward") == "reverse";
  g_reverse = reverse;
  char* dyn_heap = cfg.smem ? static_cast<char*>(std::malloc(cfg.smem)) : nullptr;  // exact size: ASan bounds
  g_dyn_smem = dyn_heap;
  g_dyn_smem_bytes = cfg.smem;
  g_blockDim = b;
  g_gridDim = g;
  g_body = &body;
  const uint64_t blocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  try {
    for (uint64_t k = 0; k < blocks; ++k) {
      const uint64_t i = reverse ? blocks - 1 - k : k;
      g_blockIdx = uint3{static_cast<unsigned>(i % g.x), static_cast<unsigned>((i / g.x) % g.y),
                         static_cast<unsigned>(i / (static_cast<uint64_t>(g.x) * g.y))};
      run_block(static_cast<int>(threads));
    }
  } catch (const BlockError& e) {
    std::free(dyn_heap);
    g_dyn_smem = nullptr;
    g_cur = nullptr;
    g_fcur = nullptr;
    std::ostringstream msg;
    msg << "cuda_emu: kernel " << name << " <<<(" << g.x << "," << g.y << "," << g.z << "), (" << b.x << "," << b.y
        << "," << b.z << ")>>> block (" << g_blockIdx.x << "," << g_blockIdx.y << "," << g_blockIdx.z
        << "): " << e.what();
    std::fprintf(stderr, "%s\n", msg.str().c_str());
    if (env_long("CONVNET_EMU_ABORT", 0)) std::abort();
    throw std::runtime_error(msg.str());
  }
  std::free(dyn_heap);
  g_dyn_smem = nullptr;
  g_cur = nullptr;
  g_fcur = nullptr;
}

void check_kernel_pointer(const char* name, int index, const void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  const Alloc* a = find_alloc(p);
  if (!a || a->device < 0) {
    std::ostringstream msg;
    msg << "cuda_emu: kernel " << name << ": pointer argument " << index << " (" << p
        << ") is not in device memory";
    std::fprintf(stderr, "%s\n", msg.str().c_str());
    throw std::runtime_error(msg.str());
  }
  if (a->device != t_device && !g_peer_enabled.count({t_device, a->device})) {
    std::ostringstream msg;
    msg << "cuda_emu: kernel " << name << " on cuda:" << t_device << ": pointer argument " << index
        << " is memory of cuda:" << a->device << " and peer access is not enabled";
    std::fprintf(stderr, "%s\n", msg.str().c_str());
    throw std::runtime_error(msg.str());
  }
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------------
// the runtime API

using namespace emu;

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorPeerAccessAlreadyEnabled: return "cudaErrorPeerAccessAlreadyEnabled";
    case cudaErrorPeerAccessNotEnabled: return "cudaErrorPeerAccessNotEnabled";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorPeerAccessAlreadyEnabled: return "peer access is already enabled";
    case cudaErrorPeerAccessNotEnabled: return "peer access has not been enabled";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last_error; }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count_();
  return *count > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}
static bool valid_device(int d) { return d >= 0 && d < device_count_(); }
cudaError_t cudaSetDevice(int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "cuda_emu (CPU emulation of an sm_90 GPU)");
  prop->totalGlobalMem = device_total();
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 227 * 1024;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->l2CacheSize = 50 * 1024 * 1024;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = static_cast<int>(env_long("CONVNET_EMU_SMS", 132)); break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute_(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > 227 * 1024) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_max_dynamic_smem[func] = value;
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaDeviceCanAccessPeer(int* can, int device, int peer) {
  if (!valid_device(device) || !valid_device(peer)) return fail(cudaErrorInvalidDevice);
  *can = device != peer && env_long("CONVNET_EMU_PEER", 1) ? 1 : 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags) {
  if (!valid_device(peer) || peer == t_device || flags != 0) return fail(cudaErrorInvalidDevice);
  if (!env_long("CONVNET_EMU_PEER", 1)) return fail(cudaErrorInvalidDevice);
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  if (!g_peer_enabled.insert({t_device, peer}).second) return fail(cudaErrorPeerAccessAlreadyEnabled);
  return cudaSuccess;
}

static cudaError_t alloc_(void** ptr, size_t bytes, int device) {
  *ptr = nullptr;
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  if (device >= 0) {
    if (g_used.size() < static_cast<size_t>(device_count_())) g_used.resize(device_count_(), 0);
    if (bytes > device_total() - g_used[device]) return fail(cudaErrorMemoryAllocation);
  }
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0 || !p) return fail(cudaErrorMemoryAllocation);
  fill_poison(p, bytes);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{bytes, device};
  if (device >= 0) g_used[device] += bytes;
  *ptr = p;
  return cudaSuccess;
}
static cudaError_t free_(void* ptr, bool host) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocs.end() || (it->second.device < 0) != host) return fail(cudaErrorInvalidValue);
  if (it->second.device >= 0) g_used[it->second.device] -= it->second.bytes;
#if EMU_ASAN
  __asan_unpoison_memory_region(ptr, it->second.bytes);
#endif
  g_allocs.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** ptr, size_t bytes) { return alloc_(ptr, bytes, t_device); }
cudaError_t cudaFree(void* ptr) { return free_(ptr, false); }
cudaError_t cudaMallocHost(void** ptr, size_t bytes) { return alloc_(ptr, bytes, -1); }
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) { return alloc_(ptr, bytes, -1); }
cudaError_t cudaFreeHost(void* ptr) { return free_(ptr, true); }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  if (g_used.size() < static_cast<size_t>(device_count_())) g_used.resize(device_count_(), 0);
  *total_bytes = device_total();
  *free_bytes = device_total() - g_used[t_device];
  return cudaSuccess;
}

// A device pointer range must lie in one allocation (of `device` when >= 0).
static bool check_range(const void* p, size_t bytes, int device, const char* what) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  uintptr_t base = 0;
  const Alloc* a = find_alloc(p, &base);
  const bool ok = a && a->device >= 0 && (device < 0 || a->device == device) &&
                  reinterpret_cast<uintptr_t>(p) + bytes <= base + a->bytes;
  if (!ok) std::fprintf(stderr, "cuda_emu: %s: %zu bytes at %p are not inside one allocation of %s%d\n", what, bytes,
                        p, device < 0 ? "a device" : "cuda:", device < 0 ? 0 : device);
  return ok;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_dev && !check_range(dst, bytes, -1, "cudaMemcpy destination")) return fail(cudaErrorInvalidValue);
  if (src_dev && !check_range(src, bytes, -1, "cudaMemcpy source")) return fail(cudaErrorInvalidValue);
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemcpyPeer(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!check_range(dst, bytes, dst_device, "cudaMemcpyPeer destination") ||
      !check_range(src, bytes, src_device, "cudaMemcpyPeer source"))
    return fail(cudaErrorInvalidValue);
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t bytes,
                                cudaStream_t) {
  return cudaMemcpyPeer(dst, dst_device, src, src_device, bytes);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (bytes && !check_range(ptr, bytes, -1, "cudaMemset")) return fail(cudaErrorInvalidValue);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  *stream = new CUstream_st{t_device};
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  return event ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st{t_device};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  // A real runtime refuses an event and a stream of different devices.
  const int sd = stream ? stream->device : t_device;
  if (!event || event->device != sd) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.0f;
  return cudaSuccess;
}
