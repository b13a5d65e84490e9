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
// Kernel sources hold inline PTX only where this is not defined (common.cu's mma_bf16_16816,
// ldmatrix_x2 and the cp.async functions).
#define NANOGPT_CUDA_EMULATOR 1
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
    unsigned meetings = 0;  // warp meetings (shuffles, mma) it has been to: picks the slot set
    // cp.async copies not yet done, each with its group (== committed: the open group).
    struct Copy {
        void* dst;
        const void* src;
        unsigned group;
    };
    std::vector<Copy> copies;
    unsigned committed = 0;
};

// What a lane publishes at a warp meeting: a shuffle's value, or an mma's A and B fragments.
struct Slot {
    unsigned long long word[3];
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
    std::vector<Slot> lanes;  // two slots per thread, for what a warp meeting exchanges
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
    l.lanes.assign(2 * n, Slot{});
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
        if (!live) {
            for (Fiber& f : l.fibers)
                if (!f.copies.empty()) fail("a thread ended with cp.async copies it never waited for");
            return;
        }
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
    // Blocks in a fixed scrambled order (a GPU promises none): block k runs (k * step) mod n,
    // step coprime to n, so neighbours in the grid rarely run one after another, and a block that
    // reads shared memory it did not write (a copy not waited for) reads another's leftovers.
    unsigned long long n = (unsigned long long)grid.x * grid.y * grid.z, step = n ? 40503 % n : 0;
    auto gcd = [](unsigned long long a, unsigned long long b) {
        while (b) {
            unsigned long long r = a % b;
            a = b;
            b = r;
        }
        return a;
    };
    while (n > 1 && gcd(step, n) != 1) step = (step + 1) % n;
    for (unsigned long long k = 0; k < n; k++) {
        unsigned long long id = n > 1 ? k * step % n : 0;
        l.block_idx = dim3{(unsigned)(id % grid.x), (unsigned)(id / grid.x % grid.y), (unsigned)(id / grid.x / grid.y)};
        run_block();
    }
    launch = outer;
}

// A warp meeting: the lane publishes `slot`, all lanes of the warp meet, and the lane gets the
// warp's slots of this meeting. Successive meetings alternate between two sets of slots: a lane
// can write a set again only two meetings later, past a meeting that every lane reaches after
// reading it. Every lane of the warp must come (no partial masks are emulated).
inline const Slot* meet(unsigned mask, const Slot& slot) {
    if (mask != 0xffffffffu) fail("a warp collective with a partial mask (not emulated)");
    Launch& l = *launch;
    Fiber& f = *l.current;
    size_t set = (f.meetings++ & 1) * l.fibers.size();
    unsigned base = f.linear & ~31u;
    l.lanes[set + f.linear] = slot;
    yield(Wait::Warp);
    // Every lane must have published in this round (a lane that had left did not).
    for (unsigned src = base; src < base + 32; src++)
        if (src >= l.fibers.size() || l.fibers[src].meetings < f.meetings)
            fail("a warp collective (shuffle, mma) meets a lane that has left the kernel or does not exist");
    return &l.lanes[set + base];
}

// A warp shuffle: each lane reads its source lane's value.
template <class T>
T shuffle(unsigned mask, T v, int source_of_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Slot slot{};
    memcpy(&slot.word[0], &v, sizeof(T));
    const Slot* warp = meet(mask, slot);
    T out;
    memcpy(&out, &warp[source_of_lane].word[0], sizeof(T));
    return out;
}

inline float bf16_value(unsigned bits16) {
    unsigned u = bits16 << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with C = D: D (16 x 8) += A (16 x 16) B
// (16 x 8). Each lane holds part of each matrix; this follows the PTX ISA's tables ("Matrix
// Fragments for mma.m16n8k16 with floating point type"), element by element, as the ISA
// states them (a register holds two elements, the lower-numbered in its low 16 bits):
//   group = lane >> 2, tig = lane % 4
//   A element ai, i < 8 (register i / 2): row = group for i in {0, 1, 4, 5}, else group + 8;
//                                         col = tig * 2 + (i & 1), + 8 for i >= 4
//   B element bi, i < 4 (register i / 2): row = tig * 2 + (i & 1), + 8 for i >= 2; col = group
//   C/D element ci, i < 4:                row = group for i < 2, else group + 8;
//                                         col = tig * 2 + (i & 1)
// The kernels' own fragment helpers (common.cu) are written from the same tables but
// register by register, so a misreading would have to be made twice, differently, to pass.
// The products are exact (bf16 x bf16 fits f32); the sum is taken in f64 and rounded once.
inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    Slot slot{};
    slot.word[0] = a[0] | (unsigned long long)a[1] << 32;
    slot.word[1] = a[2] | (unsigned long long)a[3] << 32;
    slot.word[2] = b[0] | (unsigned long long)b[1] << 32;
    const Slot* warp = meet(0xffffffffu, slot);
    float am[16][16], bm[16][8];
    for (unsigned lane = 0; lane < 32; lane++) {
        unsigned group = lane >> 2, tig = lane % 4;
        unsigned regs[6];
        for (int w = 0; w < 3; w++) {
            regs[2 * w] = (unsigned)warp[lane].word[w];
            regs[2 * w + 1] = (unsigned)(warp[lane].word[w] >> 32);
        }
        for (unsigned i = 0; i < 8; i++) {
            unsigned row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
            unsigned col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            am[row][col] = bf16_value((regs[i / 2] >> (16 * (i & 1))) & 0xffffu);
        }
        for (unsigned i = 0; i < 4; i++) {
            unsigned row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            bm[row][group] = bf16_value((regs[4 + i / 2] >> (16 * (i & 1))) & 0xffffu);
        }
    }
    unsigned lane = launch->current->linear % 32, group = lane >> 2, tig = lane % 4;
    for (unsigned i = 0; i < 4; i++) {
        unsigned row = i < 2 ? group : group + 8, col = tig * 2 + (i & 1);
        double sum = 0.0;
        for (int k = 0; k < 16; k++) sum += (double)am[row][k] * (double)bm[k][col];
        d[i] = (float)((double)d[i] + sum);
    }
}

// ldmatrix.sync.aligned.m8n8.x2[.trans].shared.b16, from the PTX ISA's description ("Warp-level
// matrix load instruction: ldmatrix"): lanes 0-7 give the addresses of matrix 0's eight rows,
// lanes 8-15 matrix 1's (eight 16-bit elements each, 16-byte aligned); register i of lane l
// receives matrix i's elements [l / 4][2 (l % 4)] and [l / 4][2 (l % 4) + 1], the first in the
// low half; with .trans, [2 (l % 4)][l / 4] and [2 (l % 4) + 1][l / 4].
inline void ldmatrix_m8n8_x2(unsigned d[2], const void* row, bool trans) {
    Slot slot{};
    slot.word[0] = (unsigned long long)(uintptr_t)row;
    const Slot* warp = meet(0xffffffffu, slot);
    unsigned lane = launch->current->linear % 32;
    for (unsigned i = 0; i < 2; i++) {
        const unsigned short* rows[8];
        for (unsigned r = 0; r < 8; r++) {
            unsigned long long address = warp[8 * i + r].word[0];
            if (address % 16 != 0) fail("an ldmatrix row address is not 16-byte aligned");
            rows[r] = reinterpret_cast<const unsigned short*>((uintptr_t)address);
        }
        unsigned r = lane / 4, c = 2 * (lane % 4);
        unsigned short lo = trans ? rows[c][r] : rows[r][c], hi = trans ? rows[c + 1][r] : rows[r][c + 1];
        d[i] = lo | (unsigned)hi << 16;
    }
}

// cp.async.cg.shared.global (16 bytes), commit_group and wait_group N, as the PTX ISA defines
// them for one thread: a copy is done at the latest when a wait_group leaves at most N of the
// thread's committed groups pending. Here that is exactly when it happens (the source is read
// then too), so a tile read before its thread's wait, or without the barrier after the other
// threads' waits, holds what was there before.
inline void cp_async16(void* dst, const void* src) {
    if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0) fail("a cp.async address is not 16-byte aligned");
    Fiber& f = *launch->current;
    f.copies.push_back({dst, src, f.committed});
}
inline void cp_async_commit() { launch->current->committed++; }
inline void cp_async_wait(unsigned pending) {
    Fiber& f = *launch->current;
    size_t kept = 0;
    for (const Fiber::Copy& c : f.copies) {
        if (c.group + pending < f.committed)
            memcpy(c.dst, c.src, 16);
        else
            f.copies[kept++] = c;
    }
    f.copies.resize(kept);
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

// common.cu's tensor-core product and shared-memory matrix loads, which the kernels there write
// in PTX.
inline void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu::mma_m16n8k16_bf16(d, a, b);
}
inline void ldmatrix_x2(unsigned d[2], const void* row, bool trans) { emu::ldmatrix_m8n8_x2(d, row, trans); }
inline void cp_async16(void* dst, const void* src) { emu::cp_async16(dst, src); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
void cp_async_wait() {
    emu::cp_async_wait(N);
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
// The fast intrinsic: here the accurate function (the GPU's differs by a couple of ulps).
inline float __expf(float x) { return expf(x); }
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
