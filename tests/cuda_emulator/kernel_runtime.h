// The device side of the CPU emulator of CUDA (see README.md here): what a kernel file needs
// from CUDA, in host C++, so the engine's kernels run unchanged on a CPU for the tests.
//
// A launch runs its blocks one after another; a block's threads are fibers (their own stacks,
// switched by emu_switch) on the calling thread. A fiber runs until it reaches a barrier (__syncthreads, or the exchange inside
// a warp shuffle) or ends, then the next fiber runs. So every thread of a block reaches a
// barrier before any passes it, as on the GPU, and a kernel that reads shared memory without
// the barrier that should guard it reads values not yet written (the tests see it). Barriers
// that cannot all be reached (one in divergent code, a shuffle with a lane that has left) stop
// the process with the kernel's name, instead of hanging as a GPU would.

#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers switch stacks with x86-64 assembly"
#endif

// Saves the callee-saved registers on the running stack, stores its pointer in *save, and
// resumes the stack `to` (one that emu_switch saved, or a fresh one from initial_stack). A
// switch is a few instructions; ucontext's swapcontext makes a system call for the signal mask,
// which made it most of the emulator's time.
extern "C" void emu_switch(void** save, void* to);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

enum class Wait { None, Warp, Block, Done };

struct Fiber {
    void* sp = nullptr;  // its saved stack pointer while it is not running
    dim3 idx;
    unsigned linear = 0;
    Wait wait = Wait::None;
    unsigned shuffles = 0;  // how many it has done: picks the slot set (see shuffle)
};

// One launch's state. thread_local: tests launch from several threads at once, each running its
// own fibers.
struct Launch {
    const char* kernel = "";
    dim3 grid, block, block_idx;
    std::vector<Fiber> fibers;
    Fiber* current = nullptr;
    void* scheduler_sp = nullptr;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    std::vector<unsigned long long> lanes;  // two slots per thread, for shuffles
};
inline thread_local Launch* launch = nullptr;

// A fiber's stack, above one inaccessible page that turns an overflow into a crash.
constexpr size_t STACK_BYTES = 64 << 10, GUARD_BYTES = 4096;

struct Stacks {
    std::vector<char*> stacks;
    ~Stacks() {
        for (char* s : stacks) munmap(s - GUARD_BYTES, GUARD_BYTES + STACK_BYTES);
    }
    char* get(size_t i) {
        while (stacks.size() <= i) {
            void* p = mmap(nullptr, GUARD_BYTES + STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED || mprotect(p, GUARD_BYTES, PROT_NONE) != 0) {
                fprintf(stderr, "cuda emulator: cannot map a fiber stack\n");
                abort();
            }
            stacks.push_back(static_cast<char*>(p) + GUARD_BYTES);
        }
        return stacks[i];
    }
};
inline thread_local Stacks stacks;

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "cuda emulator: kernel %s: %s\n", launch ? launch->kernel : "?", what);
    abort();
}

inline void yield(Wait w) {
    Fiber* f = launch->current;
    f->wait = w;
    emu_switch(&f->sp, launch->scheduler_sp);
}

[[noreturn]] inline void fiber_entry() {
    launch->body(launch->body_arg);
    yield(Wait::Done);
    fail("a finished thread was resumed");
}

// A fresh fiber's stack, as emu_switch leaves a suspended one: six callee-saved registers
// (zero), then fiber_entry as the return address, then a null one (fiber_entry never returns),
// so that fiber_entry starts with the stack aligned as a call leaves it.
inline void* initial_stack(char* stack) {
    void** top = reinterpret_cast<void**>(stack + STACK_BYTES);
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_entry);
    for (int i = 3; i <= 8; i++) top[-i] = nullptr;
    return &top[-8];
}

// Runs one block. Warps are independent between block barriers, so each warp runs on its own
// (its fibers until each waits or ends, its own barrier released as soon as all its live lanes
// reach it; 32 stacks stay in cache) until it waits at the block barrier or ends; then the block
// barrier is released once every live thread is there.
inline void run_block() {
    Launch& l = *launch;
    unsigned n = l.block.x * l.block.y * l.block.z;
    l.fibers.assign(n, Fiber{});
    l.lanes.assign(2 * n, 0);
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = l.fibers[i];
        f.linear = i;
        f.idx.x = i % l.block.x;
        f.idx.y = (i / l.block.x) % l.block.y;
        f.idx.z = i / (l.block.x * l.block.y);
        f.sp = initial_stack(stacks.get(i));
    }
    for (;;) {
        bool live = false;
        for (unsigned w = 0; w < n; w += 32) {
            unsigned end = w + 32 < n ? w + 32 : n;
            for (;;) {
                for (unsigned i = w; i < end; i++) {
                    Fiber& f = l.fibers[i];
                    if (f.wait != Wait::None) continue;
                    l.current = &f;
                    emu_switch(&l.scheduler_sp, f.sp);
                }
                bool any = false, all_warp = true;
                for (unsigned i = w; i < end; i++) {
                    Wait s = l.fibers[i].wait;
                    if (s == Wait::Done) continue;
                    any = true;
                    all_warp &= s == Wait::Warp;
                }
                if (!any || !all_warp) {
                    live |= any;
                    break;
                }
                for (unsigned i = w; i < end; i++)
                    if (l.fibers[i].wait == Wait::Warp) l.fibers[i].wait = Wait::None;
            }
        }
        if (!live) return;
        for (Fiber& f : l.fibers) {
            if (f.wait == Wait::Warp)
                fail("threads wait at different barriers (__syncthreads in divergent code, or a warp shuffle some lanes of the warp do not reach)");
            if (f.wait == Wait::Block) f.wait = Wait::None;
        }
    }
}

template <class F>
void body_of(void* f) {
    (*static_cast<F*>(f))();
}

// Runs `kernel` with `args` (the driver's argument array: a pointer to each argument) over the
// grid. The argument types come from the kernel's signature.
template <class... A, size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

template <class... A>
void run(const char* name, void (*kernel)(A...), void** args, dim3 grid, dim3 block) {
    Launch l;
    l.kernel = name;
    l.grid = grid;
    l.block = block;
    if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024)
        fail("a block of 0 or more than 1024 threads");
    auto call = [&] { call_with(kernel, args, std::index_sequence_for<A...>{}); };
    l.body = body_of<decltype(call)>;
    l.body_arg = &call;
    Launch* outer = launch;
    launch = &l;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                l.block_idx = dim3{x, y, z};
                run_block();
            }
    launch = outer;
}

// A warp shuffle: every lane publishes its value, all lanes of the warp meet, each reads its
// source lane's value. Successive shuffles alternate between two sets of slots: a lane can
// write a set again only two shuffles later, past a meeting that every lane reaches after
// reading it.
template <class T>
T shuffle(unsigned mask, T v, int source_of_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    if (mask != 0xffffffffu) fail("a shuffle with a partial mask (not emulated)");
    Launch& l = *launch;
    Fiber& f = *l.current;
    size_t set = (f.shuffles++ & 1) * l.fibers.size();
    unsigned base = f.linear & ~31u;
    unsigned long long slot = 0;
    memcpy(&slot, &v, sizeof(T));
    l.lanes[set + f.linear] = slot;
    yield(Wait::Warp);
    unsigned src = base + (unsigned)source_of_lane;
    // The source lane must have published in this round (a lane that had left did not).
    if (src >= l.fibers.size() || l.fibers[src].shuffles < f.shuffles)
        fail("a shuffle reads a lane that has left the kernel or does not exist");
    T out;
    memcpy(&out, &l.lanes[set + src], sizeof(T));
    return out;
}

}  // namespace emu

#define threadIdx (emu::launch->current->idx)
#define blockIdx (emu::launch->block_idx)
#define blockDim (emu::launch->block)
#define gridDim (emu::launch->grid)
#define warpSize 32
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __restrict__ __restrict

inline void __syncthreads() { emu::yield(emu::Wait::Block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield(emu::Wait::Warp); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu::shuffle(mask, v, (int)(emu::launch->current->linear % 32) ^ lane_mask);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
    int lane = (int)(emu::launch->current->linear % 32), src = lane + (int)delta;
    return emu::shuffle(mask, v, src < 32 ? src : lane);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int lane) {
    return emu::shuffle(mask, v, lane);
}

// CUDA's reinterpretations of a 32-bit value's bits.
template <class To, class From>
To emu_bits_as(From x) {
    static_assert(sizeof(To) == sizeof(From), "same width");
    To y;
    memcpy(&y, &x, sizeof y);
    return y;
}
inline float __int_as_float(int i) { return emu_bits_as<float>(i); }
inline float __uint_as_float(unsigned u) { return emu_bits_as<float>(u); }
inline unsigned __float_as_uint(float f) { return emu_bits_as<unsigned>(f); }
inline int __float_as_int(float f) { return emu_bits_as<int>(f); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <class T>
T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
// CUDA's integer and float min/max overloads.
#define EMU_MIN_MAX(T)                                   \
    inline T min(T a, T b) { return a < b ? a : b; }     \
    inline T max(T a, T b) { return a > b ? a : b; }
EMU_MIN_MAX(int)
EMU_MIN_MAX(unsigned)
EMU_MIN_MAX(long long)
EMU_MIN_MAX(unsigned long long)
EMU_MIN_MAX(float)
EMU_MIN_MAX(double)
#undef EMU_MIN_MAX
