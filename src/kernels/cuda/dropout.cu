// Inverted dropout with the mask recomputed from a key (common.cu's keep, the CPU's rng::keep),
// never stored: x[i] = keep(key, i) ? x[i] * scale : 0, scale = 1/(1-p) computed by the host as
// the CPU does. The same call scales activations forward and their gradients backward, so the
// GPU and the CPU drop the same elements.

extern "C" __global__ void dropout_inplace(float* x, u64 n, u64 key, float p, float scale) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = keep(key, i, p) ? x[i] * scale : 0.0f;
}
