// The CPU runtime behind cuda_on_cpu.h: fibers for CUDA threads, the block scheduler, the launch
// limits, CUDA's last-error state, counters for the tests, and guard-paged device buffers.
//
// A fiber per CUDA thread: each has its own stack (64 KiB, an inaccessible page below it) and
// runs the kernel until it calls __syncthreads() or returns; both switch back to the scheduler of
// its OS thread. The scheduler resumes every fiber of a block once per phase; when all have
// stopped, the barrier they wait at is released (all at the same __syncthreads call, else the
// launch fails: threads waiting at different barriers hang or misbehave on a GPU). Threads that
// returned no longer take part, as on Volta and later.
//
// Two blocks are resident per OS thread and run interleaved phase by phase (the first resuming its
// threads in order, the second in reverse order), each with its own
// shared memory (the kernel's `extern __shared__` array is one per OS thread, so the scheduler
// swaps the resident block's bytes in and out). A few OS threads take such pairs concurrently.
// Which blocks pair up is fixed (consecutive linear block indices), so a cross-block race shows
// deterministically: e.g. two batch items accumulating into the same workspace rows.
//
// The context switch is a few lines of x86-64 assembly (callee-saved registers, the stack pointer,
// MXCSR and the x87 control word, as the SysV ABI requires across a call); elsewhere POSIX
// ucontext (correct, but a system call per switch).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "cuda_on_cpu.h"

#define TV_EXPORT __attribute__((visibility("default")))

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace tinyvim_cuda_on_cpu {
namespace {

// ------------------------------------------------------------------ counters and errors
enum Stat { kLaunches, kMaxBlock, kMaxGridX, kMaxGridY, kMaxSmem, kLastStream, kOverruns, kRefused, kBlocks,
            kDivergent, kNbStats };
std::atomic<long long> g_stats[kNbStats];
thread_local cudaError_t t_last_error = cudaSuccess;   // per host thread, as in CUDA

void raise_to(Stat s, long long v) noexcept {
    long long cur = g_stats[s].load();
    while (v > cur && !g_stats[s].compare_exchange_weak(cur, v)) {
    }
}

cudaError_t check_launch(const LaunchConfig& c) noexcept {
    const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
    cudaError_t err = cudaSuccess;
    if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0 || threads > 1024 || c.block.x > 1024 ||
        c.block.y > 1024 || c.block.z > 64 || c.grid.x > 0x7FFFFFFFu || c.grid.y > 65535 || c.grid.z > 65535)
        err = cudaErrorInvalidConfiguration;
    else if (c.smem > kMaxDynamicSmem)
        err = cudaErrorInvalidValue;
    if (err != cudaSuccess) {
        ++g_stats[kRefused];
        return err;
    }
    ++g_stats[kLaunches];
    raise_to(kMaxBlock, static_cast<long long>(threads));
    raise_to(kMaxGridX, c.grid.x);
    raise_to(kMaxGridY, c.grid.y);
    raise_to(kMaxSmem, static_cast<long long>(c.smem));
    g_stats[kLastStream] = static_cast<long long>(reinterpret_cast<std::uintptr_t>(c.stream));
    return cudaSuccess;
}

constexpr std::uint32_t kPoison = 0x7FC0DEADu;   // a quiet NaN with a recognisable payload

// kSmemCapacity bytes of the poison pattern, made once: filling and checking are plain memcpy/memcmp.
const unsigned char* poison_pattern() noexcept {
    static const struct Pattern {
        alignas(16) unsigned char bytes[kSmemCapacity];
        Pattern() noexcept {
            for (std::size_t i = 0; i < kSmemCapacity; i += 4) std::memcpy(bytes + i, &kPoison, 4);
        }
    } pattern;
    return pattern.bytes;
}

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

// ------------------------------------------------------------------ context switch
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void tinyvim_cuda_on_cpu_switch(void** save_sp, void* next_sp);
asm(R"(
    .text
    .globl tinyvim_cuda_on_cpu_switch
    .hidden tinyvim_cuda_on_cpu_switch
    .type tinyvim_cuda_on_cpu_switch, @function
tinyvim_cuda_on_cpu_switch:
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
    .size tinyvim_cuda_on_cpu_switch, .-tinyvim_cuda_on_cpu_switch
)");

inline void switch_to(Context& from, Context& to) noexcept { tinyvim_cuda_on_cpu_switch(&from.sp, to.sp); }

// A fresh context whose first switch "returns" into entry, as if called, with the caller's
// MXCSR and x87 control word and 16-byte stack alignment at entry.
void make_context(Context& c, unsigned char* stack_lo, std::size_t size, void (*entry)()) noexcept {
    auto top = reinterpret_cast<std::uintptr_t>(stack_lo + size) & ~std::uintptr_t{15};
    auto* sp = reinterpret_cast<std::uint64_t*>(top - 72);   // 9 slots; sp + 64 is 8 mod 16 at entry
    std::uint32_t csr;
    std::uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(csr));
    asm volatile("fnstcw %0" : "=m"(cw));
    std::memset(sp, 0, 72);
    std::memcpy(sp, &csr, 4);
    std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &cw, 2);
    sp[7] = reinterpret_cast<std::uint64_t>(entry);   // after r15..rbp (slots 1-6)
    sp[8] = 0;                                        // entry never returns
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) noexcept { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, unsigned char* stack_lo, std::size_t size, void (*entry)()) noexcept {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// ------------------------------------------------------------------ fibers and the block scheduler
constexpr int kResident = 2;                    // blocks interleaved per OS thread
constexpr std::size_t kStackBytes = 64 * 1024;  // per CUDA thread (the kernel's frame is < 2 KiB)

enum class State { kReady, kBarrier, kDone };

struct Fiber {
    Context ctx;
    State state = State::kReady;
    std::uintptr_t site = 0;   // the __syncthreads call it waits at
    dim3 tid;
};

struct Worker {
    Context sched;
    Fiber* current = nullptr;
    void (*body)(const void*) = nullptr;
    const void* ctx = nullptr;
    std::vector<Fiber> fibers;
    unsigned char* stacks = nullptr;   // n_stacks x (guard page + kStackBytes)
    std::size_t n_stacks = 0;
    std::vector<unsigned char> images;   // kResident x kMaxDynamicSmem: non-resident blocks' shared memory

    unsigned char* stack(std::size_t i) const noexcept { return stacks + i * (kPage + kStackBytes) + kPage; }

    bool ensure(std::size_t n) noexcept {
        if (n <= n_stacks) return true;
        if (stacks) munmap(stacks, n_stacks * (kPage + kStackBytes));
        const std::size_t bytes = n * (kPage + kStackBytes);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            stacks = nullptr;
            n_stacks = 0;
            return false;
        }
        stacks = static_cast<unsigned char*>(p);
        n_stacks = n;
        for (std::size_t i = 0; i < n; ++i) mprotect(stack(i) - kPage, kPage, PROT_NONE);   // overflow faults
        fibers.resize(n);
        images.resize(kResident * kMaxDynamicSmem);
        return true;
    }
};

thread_local Worker* t_worker = nullptr;

Worker& this_worker() {
    if (!t_worker) t_worker = new Worker();   // one per OS thread, kept for the process's life
    return *t_worker;
}

void fiber_entry() {
    Worker& w = *t_worker;
    w.body(w.ctx);
    w.current->state = State::kDone;
    switch_to(w.current->ctx, w.sched);
    std::abort();   // a finished fiber is never resumed
}

struct GroupResult {
    long long blocks = 0, overruns = 0, divergent = 0;
    bool ok = true;
};

dim3 unflatten(long long i, dim3 extent) {
    return dim3(static_cast<unsigned>(i % extent.x), static_cast<unsigned>((i / extent.x) % extent.y),
                static_cast<unsigned>(i / (1ll * extent.x * extent.y)));
}

// Runs blocks [first, first + count) of the grid interleaved on the calling OS thread.
GroupResult run_group(Worker& w, const LaunchConfig& cfg, long long first, int count) noexcept {
    GroupResult res;
    const unsigned nt = cfg.block.x * cfg.block.y * cfg.block.z;
    if (!w.ensure(static_cast<std::size_t>(count) * nt)) {
        res.ok = false;
        return res;
    }
    blockDim = cfg.block;
    gridDim = cfg.grid;
    unsigned char* smem = dynamic_smem();
    const std::size_t used = cfg.smem;
    std::memcpy(smem, poison_pattern(), used + kGuardBytes);
    if (count > 1)
        for (int s = 0; s < count; ++s) std::memcpy(w.images.data() + s * kMaxDynamicSmem, poison_pattern(), used);
    dim3 bidx[kResident];
    bool done[kResident] = {};
    for (int s = 0; s < count; ++s) {
        bidx[s] = unflatten(first + s, cfg.grid);
        for (unsigned t = 0; t < nt; ++t) {
            Fiber& f = w.fibers[s * nt + t];
            f.state = State::kReady;
            f.tid = unflatten(t, cfg.block);
            make_context(f.ctx, w.stack(s * nt + t), kStackBytes, fiber_entry);
        }
    }
    int resident = 0, live = count;
    while (live > 0) {
        for (int s = 0; s < count; ++s) {
            if (done[s]) continue;
            if (s != resident) {   // swap the block's shared memory in
                std::memcpy(w.images.data() + resident * kMaxDynamicSmem, smem, used);
                std::memcpy(smem, w.images.data() + s * kMaxDynamicSmem, used);
                resident = s;
            }
            blockIdx = bidx[s];
            std::uintptr_t site = 0;
            bool waiting = false, divergent = false;
            for (unsigned i = 0; i < nt; ++i) {
                // The second block of a pair resumes its threads last to first: a GPU gives no
                // order between warps, so code that needs one (a thread reading what a later
                // thread writes before the barrier that would order them) fails in one of the two.
                const unsigned t = s % 2 ? nt - 1 - i : i;
                Fiber& f = w.fibers[s * nt + t];
                if (f.state == State::kDone) continue;
                threadIdx = f.tid;
                w.current = &f;
                switch_to(w.sched, f.ctx);
                if (f.state == State::kBarrier) {
                    if (waiting && f.site != site) divergent = true;
                    waiting = true;
                    site = f.site;
                    f.state = State::kReady;   // released once every thread has been run
                }
            }
            w.current = nullptr;
            res.divergent += divergent;
            if (!waiting) {
                done[s] = true;
                --live;
                ++res.blocks;
            }
        }
    }
    if (std::memcmp(smem + used, poison_pattern(), kGuardBytes) != 0) ++res.overruns;
    return res;
}

// ------------------------------------------------------------------ the OS threads
struct Job {
    const LaunchConfig* cfg;
    void (*body)(const void*);
    const void* ctx;
    long long nblocks;
    std::atomic<long long> next{0};
    std::atomic<long long> blocks{0}, overruns{0}, divergent{0};
    std::atomic<bool> failed{false};
};

void work(Job& job) noexcept {
    Worker& w = this_worker();
    w.body = job.body;
    w.ctx = job.ctx;
    for (;;) {
        const long long g = job.next.fetch_add(1);
        const long long first = g * kResident;
        if (first >= job.nblocks) break;
        const int count = static_cast<int>(std::min<long long>(kResident, job.nblocks - first));
        const GroupResult r = run_group(w, *job.cfg, first, count);
        job.blocks += r.blocks;
        job.overruns += r.overruns;
        job.divergent += r.divergent;
        if (!r.ok) job.failed = true;
    }
}

// Threads beside the launching one; they sleep on a condition variable between launches (no
// core is taken from the tests that run after this library is loaded).
class Pool {
public:
    explicit Pool(unsigned extra) {
        for (unsigned i = 0; i < extra; ++i) threads_.emplace_back([this] { loop(); });
    }
    void run(Job& job) {
        if (threads_.empty() || job.nblocks <= kResident) {
            work(job);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(m_);
            job_ = &job;
            ++generation_;
            busy_ = static_cast<int>(threads_.size());
        }
        cv_.notify_all();
        work(job);
        std::unique_lock<std::mutex> lock(m_);
        done_.wait(lock, [this] { return busy_ == 0; });
        job_ = nullptr;
    }

private:
    void loop() {
        unsigned long long seen = 0;
        for (;;) {
            Job* job;
            {
                std::unique_lock<std::mutex> lock(m_);
                cv_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                job = job_;
            }
            work(*job);
            std::lock_guard<std::mutex> lock(m_);
            if (--busy_ == 0) done_.notify_all();
        }
    }
    std::vector<std::thread> threads_;
    std::mutex m_;
    std::condition_variable cv_, done_;
    Job* job_ = nullptr;
    unsigned long long generation_ = 0;
    int busy_ = 0;
};

// TINYVIM_CUDA_ON_CPU_THREADS OS threads (default: the cores, at most 4); 1 = all on the caller.
Pool& pool() {
    static Pool* p = [] {
        unsigned n = std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
        if (const char* env = std::getenv("TINYVIM_CUDA_ON_CPU_THREADS")) n = std::max(1, std::atoi(env));
        return new Pool(n - 1);   // never destroyed: its threads sleep until the process exits
    }();
    return *p;
}

std::mutex g_launch_mutex;   // one launch at a time (the pool serves one job)

}  // namespace

namespace detail {

void set_last_error(cudaError_t err) noexcept { t_last_error = err; }

cudaError_t take_last_error() noexcept {
    const cudaError_t err = t_last_error;
    t_last_error = cudaSuccess;
    return err;
}

cudaError_t peek_last_error() noexcept { return t_last_error; }

cudaError_t run_grid(const LaunchConfig& cfg, void (*body)(const void*), const void* ctx) noexcept {
    const cudaError_t err = check_launch(cfg);
    if (err != cudaSuccess) return err;
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    Job job;
    job.cfg = &cfg;
    job.body = body;
    job.ctx = ctx;
    job.nblocks = 1ll * cfg.grid.x * cfg.grid.y * cfg.grid.z;
    pool().run(job);
    g_stats[kBlocks] += job.blocks.load();
    g_stats[kOverruns] += job.overruns.load();
    g_stats[kDivergent] += job.divergent.load();
    if (job.failed) return cudaErrorMemoryAllocation;
    if (job.overruns) return cudaErrorIllegalAddress;
    if (job.divergent) return cudaErrorLaunchFailure;
    return cudaSuccess;
}

}  // namespace detail

// ------------------------------------------------------------------ guard-paged device buffers
namespace {

struct Allocation {
    std::atomic<std::uintptr_t> base{0};   // 0: free slot; set last, cleared first
    std::size_t total = 0;                 // mapped bytes, guard pages included
    std::uintptr_t ptr = 0;
    std::size_t bytes = 0;
    char name[64] = {};
};
constexpr int kMaxAllocations = 1024;
Allocation g_allocations[kMaxAllocations];
std::mutex g_alloc_mutex;
struct sigaction g_previous;
bool g_handler_installed = false;

void put(const char* s) noexcept { (void)!write(2, s, std::strlen(s)); }

void put_number(unsigned long long v) noexcept {
    char buf[24];
    int i = sizeof buf;
    buf[--i] = '\0';
    do {
        buf[--i] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    put(buf + i);
}

// Names the buffer whose guard page was touched, then hands the fault to the handler that was
// there before (Python's faulthandler under pytest) or to the default action: the faulting
// access is retried on return and faults again, now into that handler.
void on_fault(int, siginfo_t* info, void*) {
    const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
    for (auto& a : g_allocations) {
        const std::uintptr_t base = a.base.load(std::memory_order_acquire);
        if (!base || addr < base || addr >= base + a.total) continue;
        put("tinyvim_cuda_on_cpu: out-of-bounds access to device buffer '");
        put(a.name);
        put("' (");
        put_number(a.bytes);
        if (addr >= a.ptr + a.bytes) {
            put(" bytes): ");
            put_number(addr - (a.ptr + a.bytes));
            put(" bytes past its end\n");
        } else {
            put(" bytes): ");
            put_number(a.ptr - addr);
            put(" bytes before its start\n");
        }
        break;
    }
    sigaction(SIGSEGV, &g_previous, nullptr);
}

}  // namespace
}  // namespace tinyvim_cuda_on_cpu

void __syncthreads() noexcept {
    using namespace tinyvim_cuda_on_cpu;
    Worker* w = t_worker;
    if (!w || !w->current) return;   // outside a launch: nothing to wait for
    Fiber* f = w->current;
    f->state = State::kBarrier;
    f->site = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
    switch_to(f->ctx, w->sched);
}

extern "C" {

TV_EXPORT int tinyvim_cuda_on_cpu_stats(long long* out, int n) {
    using namespace tinyvim_cuda_on_cpu;
    for (int i = 0; i < n && i < kNbStats; ++i) out[i] = g_stats[i].load();
    return kNbStats;
}

TV_EXPORT void tinyvim_cuda_on_cpu_reset_stats(void) {
    for (auto& s : tinyvim_cuda_on_cpu::g_stats) s = 0;
}

TV_EXPORT void* tinyvim_cuda_on_cpu_malloc(size_t bytes, const char* name) {
    using namespace tinyvim_cuda_on_cpu;
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    if (!g_handler_installed) {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_previous);
        g_handler_installed = true;
    }
    Allocation* slot = nullptr;
    for (auto& a : g_allocations)
        if (!a.base.load()) {
            slot = &a;
            break;
        }
    if (!slot) return nullptr;
    const std::size_t data = (bytes + kPage - 1) / kPage * kPage;
    const std::size_t total = data + 2 * kPage;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    auto* base = static_cast<unsigned char*>(p);
    mprotect(base, kPage, PROT_NONE);
    mprotect(base + kPage + data, kPage, PROT_NONE);
    unsigned char* ptr = base + kPage + data - bytes;   // the last byte touches the guard page
    std::memset(ptr, 0xFF, bytes);
    slot->total = total;
    slot->ptr = reinterpret_cast<std::uintptr_t>(ptr);
    slot->bytes = bytes;
    std::strncpy(slot->name, name ? name : "?", sizeof slot->name - 1);
    slot->base.store(reinterpret_cast<std::uintptr_t>(base), std::memory_order_release);
    return ptr;
}

TV_EXPORT void tinyvim_cuda_on_cpu_free(void* ptr) {
    using namespace tinyvim_cuda_on_cpu;
    if (!ptr) return;
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    for (auto& a : g_allocations) {
        const std::uintptr_t base = a.base.load();
        if (base && a.ptr == reinterpret_cast<std::uintptr_t>(ptr)) {
            a.base.store(0);
            munmap(reinterpret_cast<void*>(base), a.total);
            return;
        }
    }
}

TV_EXPORT const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {   // CUDA's own wording
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
    }
    return "unrecognized error code";
}

}  // extern "C"
