// Deterministic column sums of a (rows, n) matrix, for bias gradients: acc[j] += sum_i m[i, j].
// No atomics: pass 1 sums fixed chunks of COLSUM_ROWS rows into partial[chunk, j]; pass 2 adds
// the partials to acc in chunk order. The result depends only on the shape, never on timing.

#define COLSUM_ROWS 128

// grid (ceil(n / blockDim.x), chunks). m is f32, or bf16 (colsum_partial_bf16: in bf16 training
// a bias's gradient sums the bf16 output gradient its product reads, as PyTorch's autocast).
template <class In>
__device__ void colsum_partial_impl(float* partial, const In* m, u64 rows, u64 n) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 r0 = (u64)blockIdx.y * COLSUM_ROWS;
    if (j >= n) return;
    u64 r1 = r0 + COLSUM_ROWS < rows ? r0 + COLSUM_ROWS : rows;
    float s = 0.0f;
    for (u64 r = r0; r < r1; r++) s += load(m + r * n + j);
    partial[blockIdx.y * n + j] = s;
}

extern "C" __global__ void colsum_partial(float* partial, const float* m, u64 rows, u64 n) {
    colsum_partial_impl(partial, m, rows, n);
}

extern "C" __global__ void colsum_partial_bf16(float* partial, const bf16* m, u64 rows, u64 n) {
    colsum_partial_impl(partial, m, rows, n);
}

// grid ceil(n / blockDim.x)
extern "C" __global__ void colsum_finish(float* acc, const float* partial, u64 chunks, u64 n) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = acc[j];
    for (u64 c = 0; c < chunks; c++) s += partial[c * n + j];
    acc[j] = s;
}
