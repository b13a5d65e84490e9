// AdamW as PyTorch computes it, with nanoGPT's two groups, and global-norm gradient clipping.
//
// p *= 1 - lr*wd (decoupled decay, only where the group decays)
// m = m + (1-b1)*(g - m);  v = b2*v + (1-b2)*g^2
// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
// norm = sqrt(sum g^2): f64 partial sums over fixed chunks of NORM_CHUNK (the CPU's chunking),
// added in order by the host; clipping scales by max_norm / (norm + 1e-6) when that is below 1.
// The step-dependent scalars are computed by the host exactly as the CPU computes them.
// In bf16 training the update also writes the bf16 copy that the matrix products read, rounded
// stochastically from the new master weight (bf16.cu) with the step's key: one pass, where a
// separate rounding pass would read the master again.

#define NORM_CHUNK 16384

// groups: n_groups (first index, decays?) pairs, sorted, the first starting at 0. copy: null, or
// the bf16 weight copy.
extern "C" __global__ void adamw_update(float* params, const float* grads, float* m, float* v, u64 n,
                                        const u64* group_start, const int* group_decay, int n_groups,
                                        float b1, float b2, float eps, float step_size,
                                        float bc2_sqrt, float decayed, bf16* copy, u64 round_key) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // The last group starting at or before i.
    int lo = 0, hi = n_groups - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (group_start[mid] <= i) lo = mid; else hi = mid - 1;
    }
    float p = params[i] * (group_decay[lo] ? decayed : 1.0f);
    float g = grads[i];
    float mi = m[i] + (1.0f - b1) * (g - m[i]);
    float vi = b2 * v[i] + (1.0f - b2) * g * g;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    p -= step_size * mi / denom;
    params[i] = p;
    if (copy) copy[i] = bf16_bits_stochastic(p, round_key, i);
    m[i] = mi;
    v[i] = vi;
}

// partials[block] = sum of g^2 over chunk `block` (NORM_CHUNK elements), in f64.
// grid ceil(n / NORM_CHUNK), blockDim 256.
extern "C" __global__ void norm_partials(double* partials, const float* grads, u64 n) {
    __shared__ double shared[256];
    u64 start = (u64)blockIdx.x * NORM_CHUNK;
    u64 end = start + NORM_CHUNK < n ? start + NORM_CHUNK : n;
    double s = 0.0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) s += (double)grads[i] * (double)grads[i];
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
}

extern "C" __global__ void scale_inplace(float* x, u64 n, float coef) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= coef;
}
