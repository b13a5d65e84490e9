// Fused softmax + cross-entropy over the real vocabulary V (padded columns up to Vp are ignored).
//
// forward: lse = log(sum_v exp(z_v)), loss_row = lse - z_target; target -1 means "no loss here".
// backward, in place over the logits: dz_v = (exp(z_v - lse) - [v == target]) * scale for v < V,
// 0 for padded columns and ignored rows. scale = grad_scale / valid positions (host-computed).
// The probabilities are never stored: the backward pass recomputes them from the saved lse and
// overwrites the logits with their gradient. So the logits (B*T x padded vocab, the largest
// tensor of a GPT-2 step) are read once by each pass, written once by backward. One block per
// row; the host sums the row losses. In bf16 training the logits are bf16 (the classifier's
// product writes them so, as PyTorch's autocast does), and so is their gradient, which only the
// classifier's products read: half the bytes of the largest tensor, in each of the four passes.

// grid rows, blockDim a multiple of 32 (at most 1024). One pass over the row: each thread keeps
// its elements' running max m and sum s of e^(z - m) (rescaled when m grows), then the block
// merges the threads' pairs in a fixed order: (m1, s1) + (m2, s2) = (M, s1 e^(m1-M) + s2 e^(m2-M)).
__device__ __forceinline__ void merge_max_sum(float* m, float* s, float m2, float s2) {
    float big = fmaxf(*m, m2);
    // Two -inf maxima (no elements yet) merge to an empty pair, not NaN.
    *s = big == NEG_INF ? 0.0f : *s * expf(*m - big) + s2 * expf(m2 - big);
    *m = big;
}

__device__ __forceinline__ void warp_max_sum(float* m, float* s) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, *m, o), s2 = __shfl_xor_sync(0xffffffffu, *s, o);
        merge_max_sum(m, s, m2, s2);
    }
}

template <class In>
__device__ void crossentropy_forward_impl(float* row_loss, float* row_lse, const In* logits,
                                          const int* targets, u64 vocab, u64 padded_vocab) {
    __shared__ float shared_m[32], shared_s[32];
    u64 row = blockIdx.x;
    const In* z = logits + row * padded_vocab;
    float m = NEG_INF, s = 0.0f;
    for (u64 v = threadIdx.x; v < vocab; v += blockDim.x) {
        float x = load(z + v);
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    warp_max_sum(&m, &s);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++) merge_max_sum(&m, &s, shared_m[w], shared_s[w]);
        float lse = m + logf(s);
        int t = targets[row];
        row_lse[row] = lse;
        row_loss[row] = t >= 0 ? lse - load(z + t) : 0.0f;
    }
}

extern "C" __global__ void crossentropy_forward(float* row_loss, float* row_lse, const float* logits,
                                                const int* targets, u64 vocab, u64 padded_vocab) {
    crossentropy_forward_impl(row_loss, row_lse, logits, targets, vocab, padded_vocab);
}

extern "C" __global__ void crossentropy_forward_bf16(float* row_loss, float* row_lse, const bf16* logits,
                                                     const int* targets, u64 vocab, u64 padded_vocab) {
    crossentropy_forward_impl(row_loss, row_lse, logits, targets, vocab, padded_vocab);
}

__device__ __forceinline__ float crossentropy_grad(float z, u64 v, int t, float lse, u64 vocab, float scale) {
    return (t >= 0 && v < vocab) ? expf(z - lse) * scale - (v == (u64)t ? scale : 0.0f) : 0.0f;
}

// grid rows. Each element is read and overwritten by the same thread.
template <class T>
__device__ void crossentropy_backward_inplace_impl(T* logits, const float* row_lse, const int* targets,
                                                   u64 vocab, u64 padded_vocab, float scale) {
    u64 row = blockIdx.x;
    T* z = logits + row * padded_vocab;
    int t = targets[row];
    float lse = row_lse[row];
    for (u64 v = threadIdx.x; v < padded_vocab; v += blockDim.x)
        store(z + v, crossentropy_grad(load(z + v), v, t, lse, vocab, scale));
}

extern "C" __global__ void crossentropy_backward_inplace(float* logits, const float* row_lse,
                                                         const int* targets, u64 vocab,
                                                         u64 padded_vocab, float scale) {
    crossentropy_backward_inplace_impl(logits, row_lse, targets, vocab, padded_vocab, scale);
}

extern "C" __global__ void crossentropy_backward_inplace_bf16(bf16* logits, const float* row_lse,
                                                              const int* targets, u64 vocab,
                                                              u64 padded_vocab, float scale) {
    crossentropy_backward_inplace_impl(logits, row_lse, targets, vocab, padded_vocab, scale);
}
