// Fused softmax + cross-entropy over the real vocabulary V (padded columns up to Vp are ignored).
//
// forward: lse = log(sum_v exp(z_v)), loss_row = lse - z_target; target -1 means "no loss here".
// backward, in place over the logits: dz_v = (exp(z_v - lse) - [v == target]) * scale for v < V,
// 0 for padded columns and ignored rows. scale = grad_scale / valid positions (host-computed).
// The probabilities are never stored: the backward pass recomputes them from the saved lse and
// overwrites the logits with their gradient. One block per row; the host sums the row losses.

// grid rows, blockDim a multiple of 32 (at most 1024).
extern "C" __global__ void crossentropy_forward(float* row_loss, float* row_lse, const float* logits,
                                                const int* targets, u64 vocab, u64 padded_vocab) {
    __shared__ float shared[32];
    u64 row = blockIdx.x;
    const float* z = logits + row * padded_vocab;
    float m = NEG_INF;
    for (u64 v = threadIdx.x; v < vocab; v += blockDim.x) m = fmaxf(m, z[v]);
    m = block_max(m, shared);
    float s = 0.0f;
    for (u64 v = threadIdx.x; v < vocab; v += blockDim.x) s += expf(z[v] - m);
    s = block_sum(s, shared);
    if (threadIdx.x == 0) {
        float lse = m + logf(s);
        int t = targets[row];
        row_lse[row] = lse;
        row_loss[row] = t >= 0 ? lse - z[t] : 0.0f;
    }
}

// grid rows.
extern "C" __global__ void crossentropy_backward_inplace(float* logits, const float* row_lse,
                                                         const int* targets, u64 vocab,
                                                         u64 padded_vocab, float scale) {
    u64 row = blockIdx.x;
    float* z = logits + row * padded_vocab;
    int t = targets[row];
    float lse = row_lse[row];
    for (u64 v = threadIdx.x; v < padded_vocab; v += blockDim.x) {
        float d = 0.0f;
        if (t >= 0 && v < vocab) d = expf(z[v] - lse) * scale - (v == (u64)t ? scale : 0.0f);
        z[v] = d;
    }
}
