// Shared device helpers, compiled ahead of every kernel file (NVRTC has no headers at run time,
// so the kernel files are concatenated into one program: this file first).
//
// keep(key, i, p): the dropout mask of src/rng.rs, bit for bit:
//   bits = mix64(key ^ i * 0xD6E8FEB86659FD93),  kept = (bits >> 40) * 2^-24 >= p
//   mix64(z): z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31
// (bits >> 40) has 24 bits, so its float conversion and the scaling by 2^-24 are exact.

typedef unsigned long long u64;

// -infinity without math.h.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// 64 random bits for element `index` of the stream `key`: dropout's and stochastic rounding's.
__device__ __forceinline__ u64 hash_index(u64 key, u64 index) {
    return mix64(key ^ (index * 0xD6E8FEB86659FD93ULL));
}

__device__ __forceinline__ bool keep(u64 key, u64 index, float p_drop) {
    return (float)(hash_index(key, index) >> 40) * (1.0f / 16777216.0f) >= p_drop;
}

// Sum and max over a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Sum over a block of at most 1024 threads (a multiple of 32); every thread gets the result.
// `shared` holds 32 floats. The order of additions is fixed, so the result is deterministic.
__device__ float block_sum(float x, float* shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(x);
}

__device__ float block_max(float x, float* shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : NEG_INF;
    return warp_max(x);
}

// D (16 x 8, f32) += A (16 x 16, bf16) B (16 x 8, bf16) on the tensor cores: PTX mma.sync
// m16n8k16, one warp, every lane taking part. Each lane holds a fragment of each matrix, two
// bf16 elements per register, the lower-numbered in the low half (PTX ISA, "Matrix Fragments
// for mma.m16n8k16 with floating point type"); with g = lane / 4 and q = lane % 4:
//   a[0] = A[g][2q, 2q+1]     a[1] = A[g+8][2q, 2q+1]   a[2] = A[g][2q+8, 2q+9]   a[3] = A[g+8][2q+8, 2q+9]
//   b[0] = B[2q, 2q+1][g]     b[1] = B[2q+8, 2q+9][g]
//   d[0], d[1] = D[g][2q, 2q+1]                          d[2], d[3] = D[g+8][2q, 2q+1]
// (The CPU emulator of the tests defines its own, from the ISA's tables, in place of the PTX.)
// The instruction exists from sm_80 on; below, where ptxas would reject it and with it the whole
// program, the function traps: its only callers are bf16 training's kernels, and the engine
// refuses bf16 below compute capability 8.0.
#ifndef NANOGPT_CUDA_EMULATOR
__device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("trap;");
#endif
}

// Two 8 x 8 matrices of 16-bit elements from shared memory, one register each, on the tensor
// cores' fragment layout: PTX ldmatrix.sync.aligned.m8n8.x2, one warp, every lane taking part.
// Lanes 0-7 give the addresses of matrix 0's rows, lanes 8-15 matrix 1's (8 contiguous
// elements, 16-byte aligned); lane l then holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1
// of each (the first in the low half); with `trans`, the transpose's: column l / 4, rows 2 (l % 4)
// and 2 (l % 4) + 1. (The emulator's version follows the ISA's description element by element.)
// From sm_75; below the kernels' floor (sm_80) it traps like mma_bf16_16816.
__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned a;
    asm("{ .reg .u64 g; cvta.to.shared.u64 g, %1; cvt.u32.u64 %0, g; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void ldmatrix_x2(unsigned d[2], const void* row, bool trans) {
#if __CUDA_ARCH__ >= 800
    unsigned a = shared_address(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                     : "=r"(d[0]), "=r"(d[1]) : "r"(a) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                     : "=r"(d[0]), "=r"(d[1]) : "r"(a) : "memory");
#else
    asm volatile("trap;");
#endif
}

// Copies from global to shared memory that run while the thread goes on (PTX cp.async, sm_80
// on): cp_async16 starts one of 16 bytes (both addresses 16-byte aligned), cp_async_commit closes
// the thread's group of them, cp_async_wait<N> returns once at most N of its groups are pending;
// a barrier after it shows every thread's copies to the block.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(dst)), "l"(src) : "memory");
#else
    asm volatile("trap;");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
#endif
