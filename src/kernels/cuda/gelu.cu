// GELU, GPT-2's tanh form (gelu_new): y = x/2 * (1 + tanh(k*(x + 0.044715 x^3))), k = sqrt(2/pi).
// dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * k * (1 + 3*0.044715 x^2), t = tanh(k*(x + 0.044715 x^3)).

#define GELU_K 0.7978845608f
#define GELU_A 0.044715f

// The output is f32, or bf16 (gelu_forward_bf16) in bf16 training, where only the next matrix
// product reads it (backward starts from the input).
template <class Out>
__device__ void gelu_forward_impl(Out* out, const float* inp, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = inp[i];
        store(out + i, 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_A * x * x * x))));
    }
}

extern "C" __global__ void gelu_forward(float* out, const float* inp, u64 n) { gelu_forward_impl(out, inp, n); }

extern "C" __global__ void gelu_forward_bf16(bf16* out, const float* inp, u64 n) {
    gelu_forward_impl(out, inp, n);
}

// dinp = dout * dy/dx. In f32 training in place (dinp = dout); in bf16 training dinp is bf16
// (gelu_backward_bf16), since only the next product and its bias's column sum read it: the
// bits to_bf16 would make of the f32 gradient, without that pass.
template <class Out>
__device__ void gelu_backward_impl(Out* dinp, const float* dout, const float* inp, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = inp[i];
        float t = tanhf(GELU_K * (x + GELU_A * x * x * x));
        float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        store(dinp + i, dout[i] * d);
    }
}

extern "C" __global__ void gelu_backward(float* dinp, const float* dout, const float* inp, u64 n) {
    gelu_backward_impl(dinp, dout, inp, n);
}

extern "C" __global__ void gelu_backward_bf16(bf16* dinp, const float* dout, const float* inp, u64 n) {
    gelu_backward_impl(dinp, dout, inp, n);
}
