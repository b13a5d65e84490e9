// GELU, GPT-2's tanh form (gelu_new): y = x/2 * (1 + tanh(k*(x + 0.044715 x^3))), k = sqrt(2/pi).
// dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * k * (1 + 3*0.044715 x^2), t = tanh(k*(x + 0.044715 x^3)).

#define GELU_K 0.7978845608f
#define GELU_A 0.044715f

// f32 in and out, or bf16 in and out (gelu_forward_bf16) in bf16 training: the input is what
// c_fc's product wrote (bf16 there, as PyTorch's autocast keeps it), the output only the next
// product reads (backward starts from the input).
template <class In, class Out>
__device__ void gelu_forward_impl(Out* out, const In* inp, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = load(inp + i);
        store(out + i, 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_A * x * x * x))));
    }
}

extern "C" __global__ void gelu_forward(float* out, const float* inp, u64 n) { gelu_forward_impl(out, inp, n); }

extern "C" __global__ void gelu_forward_bf16(bf16* out, const bf16* inp, u64 n) {
    gelu_forward_impl(out, inp, n);
}

// dinp = dout * dy/dx. In f32 training in place (dinp = dout); in bf16 training the input is
// bf16 and so is dinp (gelu_backward_bf16), since only the next product and its bias's column
// sum read it: the bits to_bf16 would make of the f32 gradient, without that pass.
template <class In, class Out>
__device__ void gelu_backward_impl(Out* dinp, const float* dout, const In* inp, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = load(inp + i);
        float t = tanhf(GELU_K * (x + GELU_A * x * x * x));
        float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        store(dinp + i, dout[i] * d);
    }
}

extern "C" __global__ void gelu_backward(float* dinp, const float* dout, const float* inp, u64 n) {
    gelu_backward_impl(dinp, dout, inp, n);
}

extern "C" __global__ void gelu_backward_bf16(bf16* dinp, const float* dout, const bf16* inp, u64 n) {
    gelu_backward_impl(dinp, dout, inp, n);
}
