// GELU, GPT-2's tanh form (gelu_new): y = x/2 * (1 + tanh(k*(x + 0.044715 x^3))), k = sqrt(2/pi).
// dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * k * (1 + 3*0.044715 x^2), t = tanh(k*(x + 0.044715 x^3)).

#define GELU_K 0.7978845608f
#define GELU_A 0.044715f

// f32 in and out, or bf16 in and out (gelu_forward_bf16) in bf16 training: the input is what
// c_fc's product wrote (bf16 there, as PyTorch's autocast keeps it), the output only the next
// product reads (backward starts from the input). With cuBLASLt's GELU epilogue, bf16 training
// does this inside c_fc's product instead (from the f32 sum) unless backward remakes the output.
template <class T>
__device__ void gelu_forward_impl(T* out, const T* inp, u64 n) {
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

// d = d * dy/dx, in place: d is the product's gradient of GELU's output on entry, of its input
// on return. f32 in f32 training; in bf16 training (when cuBLASLt's DGELU epilogue does not do
// this inside the product) d and the input are bf16: the product wrote d rounded, and only
// c_fc's products and its bias's column sum read the result.
template <class T>
__device__ void gelu_backward_impl(T* d, const T* inp, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = load(inp + i);
        float t = tanhf(GELU_K * (x + GELU_A * x * x * x));
        float dy = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        store(d + i, load(d + i) * dy);
    }
}

extern "C" __global__ void gelu_backward_inplace(float* d, const float* inp, u64 n) { gelu_backward_impl(d, inp, n); }

extern "C" __global__ void gelu_backward_inplace_bf16(bf16* d, const bf16* inp, u64 n) {
    gelu_backward_impl(d, inp, n);
}
