// Token + position embedding: out[r, :] = wte[tokens[r], :] + wpe[pos[r], :], one position per
// row (r % T in training; the cache length onward when generating).
// backward: dwte[tokens[r]] += dout[r], dwpe[pos] += dout[r]. Tokens repeat, so rows cannot be
// split among threads without atomics; instead the host buckets rows by token (each bucket's
// rows in increasing order), and one thread per (bucket, column) walks its rows in order,
// starting from the gradient already there. That is the CPU's order of additions exactly, and
// deterministic.

extern "C" __global__ void encoder_forward(float* out, const unsigned int* tokens, const int* pos,
                                           const float* wte, const float* wpe, u64 rows, u64 c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * c) return;
    u64 r = i / c, j = i % c;
    out[i] = wte[(u64)tokens[r] * c + j] + wpe[(u64)pos[r] * c + j];
}

// grid (buckets, ceil(c / blockDim.x)): buckets on x, whose limit is 2^31 - 1. Bucket b holds
// rows bucket_rows[start[b]..start[b+1]], all with token bucket_token[b].
extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout,
                                                const int* bucket_start, const int* bucket_rows,
                                                const unsigned int* bucket_token, u64 c) {
    u64 j = (u64)blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c) return;
    int b = blockIdx.x;
    float* dst = dwte + (u64)bucket_token[b] * c + j;
    float acc = *dst;
    for (int k = bucket_start[b]; k < bucket_start[b + 1]; k++) acc += dout[(u64)bucket_rows[k] * c + j];
    *dst = acc;
}

// Training rows are (batch, t): position p collects rows p, T + p, 2T + p, ... in that order.
extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, u64 batch, u64 t, u64 c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= t * c) return;
    u64 p = i / c, j = i % c;
    float acc = dwpe[i];
    for (u64 b = 0; b < batch; b++) acc += dout[(b * t + p) * c + j];
    dwpe[i] = acc;
}
