// bf16 operands for the tensor cores: dtype = "bfloat16" multiplies every matrix in bf16 with
// f32 sums (PyTorch's autocast for a linear layer, and the CPU engine's `Precision::Bf16`), so
// each product's two operands are rounded from their f32 buffers into bf16 copies first. There
// is no backward: rounding sits in front of a product, whose backward rounds its own operands.
//
// math: bf(x) = x rounded to 8 significant bits, to nearest even:
//   bits(bf(x)) = (u + 0x7fff + ((u >> 16) & 1)) >> 16,  u = bits(x)
// a NaN stays a quiet NaN (u >> 16 | 0x40), an f32 subnormal becomes a zero of its sign.
// Bit for bit `kernels::cpu::matmul_bf16::bf16_bits`, so both engines multiply the same values.
// Written with integer operations (no cuda_bf16.h under NVRTC).

typedef unsigned short bf16;

__device__ __forceinline__ bf16 bf16_bits(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0) return (bf16)((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    return (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Stochastic rounding, for the bf16 copy of the weights that AdamW writes from the f32 master:
// bf(x) is the bf16 on either side of x (in magnitude), the farther one picked with probability
// (bits dropped) / 2^16, so that E[bf(x)] = x: the copy's rounding is noise around the master
// from step to step, not a fixed bias. With r the top 16 bits of hash_index(key, i):
//   bits(bf(x)) = (u + r) >> 16
// zeros, subnormals and NaNs as bf16_bits; an infinity stays one (its low bits are zero).
__device__ __forceinline__ bf16 bf16_bits_stochastic(float x, u64 key, u64 i) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0) return (bf16)((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    return (bf16)((u + (unsigned int)(hash_index(key, i) >> 48)) >> 16);
}

// An op whose output only matrix products read writes it in the products' type: f32, or in
// bf16 training bf(x), the bits to_bf16 would make of the f32 value.
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16* p, float x) { *p = bf16_bits(x); }
// And the ops that read such an output back (bf16 widens exactly).
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return __uint_as_float((unsigned)*p << 16); }

extern "C" __global__ void to_bf16(bf16* out, const float* in, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_bits(in[i]);
}

// The weight copy made from the master outside AdamW (when bf16 training starts or resumes),
// with the key AdamW's last step used, so it holds the bits that step would have written.
extern "C" __global__ void to_bf16_stochastic(bf16* out, const float* in, u64 n, u64 key) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_bits_stochastic(in[i], key, i);
}
