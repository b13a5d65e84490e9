// LayerNorm over the last dimension (eps 1e-5, as GPT-2).
//
// forward: mean = sum(x)/C, rstd = 1/sqrt(sum((x-mean)^2)/C + eps), y = (x-mean)*rstd*w + b
// backward, with n = (x-mean)*rstd and g = dy*w:
//   dx += rstd * (g - mean(g) - n*mean(g*n)),  dw += sum_rows dy*n,  db += sum_rows dy
// One warp per row. The parameter gradients are column sums, done without atomics as colsum.cu
// does: partial sums over fixed chunks of rows, then colsum_finish adds them in chunk order.

#define LN_EPS 1e-5f

// grid ceil(rows / (blockDim.x/32)); b may be null (a model without biases). The output is f32,
// or bf16 (the _bf16 kernels) in bf16 training, where only matrix products read it.
// With `add` (residual_layernorm_forward), the input is the residual add before the norm, made
// here (llm.c's fused residual): sum = inp + add is written, the residual stream, and normalized
// in the same pass; the same bits as residual_forward then layernorm_forward, without writing
// the sum and reading it back in two launches.
template <class Out>
__device__ void layernorm_forward_impl(Out* out, float* mean, float* rstd, float* sum, const float* inp,
                                       const float* add, const float* w, const float* b, u64 rows, int c) {
    u64 row = (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* x = inp + row * c;
    float s = 0.0f;
    if (add) {
        // Each lane reads back below only the elements it writes here.
        float* x_sum = sum + row * c;
        const float* a = add + row * c;
        for (int i = lane; i < c; i += 32) {
            float xi = x[i] + a[i];
            x_sum[i] = xi;
            s += xi;
        }
        x = x_sum;
    } else {
        for (int i = lane; i < c; i += 32) s += x[i];
    }
    float m = warp_sum(s) / c;
    float v = 0.0f;
    for (int i = lane; i < c; i += 32) v += (x[i] - m) * (x[i] - m);
    float r = 1.0f / sqrtf(warp_sum(v) / c + LN_EPS);
    Out* y = out + row * c;
    for (int i = lane; i < c; i += 32) store(y + i, (x[i] - m) * r * w[i] + (b ? b[i] : 0.0f));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                             const float* w, const float* b, u64 rows, int c) {
    layernorm_forward_impl(out, mean, rstd, (float*)0, inp, (const float*)0, w, b, rows, c);
}

extern "C" __global__ void layernorm_forward_bf16(bf16* out, float* mean, float* rstd, const float* inp,
                                                  const float* w, const float* b, u64 rows, int c) {
    layernorm_forward_impl(out, mean, rstd, (float*)0, inp, (const float*)0, w, b, rows, c);
}

extern "C" __global__ void residual_layernorm_forward(float* out, float* mean, float* rstd, float* sum,
                                                      const float* inp, const float* add, const float* w,
                                                      const float* b, u64 rows, int c) {
    layernorm_forward_impl(out, mean, rstd, sum, inp, add, w, b, rows, c);
}

extern "C" __global__ void residual_layernorm_forward_bf16(bf16* out, float* mean, float* rstd, float* sum,
                                                           const float* inp, const float* add, const float* w,
                                                           const float* b, u64 rows, int c) {
    layernorm_forward_impl(out, mean, rstd, sum, inp, add, w, b, rows, c);
}

// dx += the input gradient (residual streams accumulate). One warp per row.
extern "C" __global__ void layernorm_backward_dx(float* dinp, const float* dout, const float* inp,
                                                 const float* w, const float* mean, const float* rstd,
                                                 u64 rows, int c) {
    u64 row = (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* x = inp + row * c;
    const float* dy = dout + row * c;
    float m = mean[row], r = rstd[row];
    float g = 0.0f, gn = 0.0f;
    for (int i = lane; i < c; i += 32) {
        g += dy[i] * w[i];
        gn += dy[i] * w[i] * (x[i] - m);
    }
    float g_mean = warp_sum(g) / c;
    float gn_mean = warp_sum(gn) * r / c;
    float* dx = dinp + row * c;
    for (int i = lane; i < c; i += 32) {
        float n = (x[i] - m) * r;
        dx[i] += r * (dy[i] * w[i] - g_mean - n * gn_mean);
    }
}

// Partial parameter gradients over chunks of COLSUM_ROWS rows: partial_w[chunk, j] and
// partial_b[chunk, j] (partial_b may be null). grid (ceil(c / blockDim.x), chunks).
extern "C" __global__ void layernorm_backward_params(float* partial_w, float* partial_b,
                                                     const float* dout, const float* inp,
                                                     const float* mean, const float* rstd,
                                                     u64 rows, u64 c) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 r0 = (u64)blockIdx.y * COLSUM_ROWS;
    if (j >= c) return;
    u64 r1 = r0 + COLSUM_ROWS < rows ? r0 + COLSUM_ROWS : rows;
    float sw = 0.0f, sb = 0.0f;
    for (u64 r = r0; r < r1; r++) {
        float dy = dout[r * c + j];
        sw += dy * (inp[r * c + j] - mean[r]) * rstd[r];
        sb += dy;
    }
    partial_w[blockIdx.y * c + j] = sw;
    if (partial_b) partial_b[blockIdx.y * c + j] = sb;
}
