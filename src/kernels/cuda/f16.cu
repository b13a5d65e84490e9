// f16 operands for the tensor cores: dtype = "float16" multiplies the linear layers and the
// classifier with f16 inputs and f32 sums (PyTorch's autocast to float16), each operand rounded
// from its f32 buffer into an f16 copy first, as bf16.cu does for bf16. f16 keeps 11 significant
// bits (bf16: 8) but only f32's range down to 2^-24 and up to 65504: gradients are scaled up by
// the engine's loss scaler so that they do not vanish below that range.
//
// math: h(x) = x rounded to nearest even in f16, with u = bits(x), a = u & 0x7fffffff, the sign s:
//   NaN                        -> a quiet NaN of the sign: s | 0x7e00 | (a >> 13 & 0x3ff)
//   a >= bits(65520)           -> infinity of the sign (65520 is the tie between 65504 and 2^16)
//   a >= bits(2^-14) (normal)  -> s | (a' + 0xfff + (a' >> 13 & 1)) >> 13,  a' = a - (112 << 23)
//                                 (exponent rebiased from 127 to 15; a carry rounds up into it)
//   else (f16 subnormal, or 0) -> s | round(|x| * 2^24): the 24-bit significand m shifted right
//                                 by 126 - exponent, ties to even; 0 when that shift passes 24
// Written with integer operations (no cuda_fp16.h under NVRTC); tests/cuda_kernels.rs checks a
// transcription of it against the `half` crate.

typedef unsigned short f16;

__device__ __forceinline__ f16 f16_bits(float x) {
    unsigned int u = __float_as_uint(x);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (f16)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (f16)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        a -= 0x38000000u;
        return (f16)(sign | ((a + 0xfffu + ((a >> 13) & 1u)) >> 13));
    }
    unsigned int shift = 126u - (a >> 23);
    if (shift > 24u) return (f16)sign;
    unsigned int m = (a & 0x7fffffu) | 0x800000u;
    unsigned int n = m >> shift;
    unsigned int rest = m & ((1u << shift) - 1u);
    unsigned int half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (n & 1u))) n++;
    return (f16)(sign | n);
}

extern "C" __global__ void to_f16(f16* out, const float* in, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f16_bits(in[i]);
}
