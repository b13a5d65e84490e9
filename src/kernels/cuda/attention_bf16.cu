// Causal self-attention for bf16 training, on the tensor cores: the four products per pass are
// cuBLASLt's batched bf16 GEMMs over (batch, head) (`engine::cuda::attention`), these kernels do
// the rest. Unlike attention.cu it holds one layer's T x T scores (scratch, not kept across
// layers): the price of running the products on tensor cores without a hand-written kernel.
//
// Per (b, h), scale = 1/sqrt(hs), j <= i (causal), Z the dropout mask of attention.cu (keep /
// (1-p), else 0; element (b, h, i, j) is keep(key, ((b*H + h)*T + i)*T + j), the CPU's index),
// bf() the rounding of bf16.cu:
//   S = bf(Q) bf(K)^T                                  GEMM, f32 sums
//   lse_i = log sum_{j<=i} e^(scale S_ij)              attn_row_lse
//   P_ij = bf(e^(scale S_ij - lse_i) Z_ij), 0 for j > i attn_probs
//   O = P bf(V)                                        GEMM
// backward, S recomputed by its GEMM and P by attn_probs, with P0_ij = e^(scale S_ij - lse_i):
//   dV = P^T bf(dO),  dP = bf(dO) bf(V)^T              GEMMs
//   G_ij = dP_ij Z_ij,  dS_ij = bf(P0_ij (G_ij - sum_k P0_ik G_ik) scale)  attn_scores_backward
//   dQ = dS bf(K),  dK = dS^T bf(Q)                    GEMMs
// (sum_k P0_ik G_ik is attention.cu's D_i = dO_i . O_i.) Q, K, V and dO enter the products as
// bf16 (B, H, T, hs) copies (heads_to_bf16); the products' f32 outputs go back to the
// (B, T, C)-strided layout (heads_merge). Rows of S are (b, h, i) = r, T long; one warp per row,
// lanes striding over j, so every sum runs in a fixed order.

// Element e of a (B*T, C) matrix, C = nh*hs: its row and column there, and its index in the
// (B, H, T, hs) layout.
__device__ __forceinline__ u64 head_index(u64 e, int t, int nh, int hs, u64* row, int* col) {
    u64 c = (u64)nh * hs;
    *row = e / c;
    *col = (int)(e % c);
    int h = *col / hs, d = *col % hs;
    u64 b = *row / t, i = *row % t;
    return ((b * nh + h) * t + i) * hs + d;
}

// dst (B, H, T, hs) = bf(src), src rows (B*T of them) `src_rs` apart, head h at columns h*hs.
// n = B*T*H*hs, one thread per element.
extern "C" __global__ void heads_to_bf16(bf16* dst, const float* src, u64 src_rs, int t, int nh, int hs,
                                         u64 n) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x, row;
    int col;
    if (e < n) {
        u64 to = head_index(e, t, nh, hs, &row, &col);
        dst[to] = bf16_bits(src[row * src_rs + col]);
    }
}

// The way back: dst rows `dst_rs` apart, head h at columns h*hs, from src (B, H, T, hs).
extern "C" __global__ void heads_merge(float* dst, u64 dst_rs, const float* src, int t, int nh, int hs,
                                       u64 n) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x, row;
    int col;
    if (e < n) {
        u64 from = head_index(e, t, nh, hs, &row, &col);
        dst[row * dst_rs + col] = src[from];
    }
}

// The warp's row r of `rows`; false past the end (the whole warp leaves together).
__device__ __forceinline__ bool warp_row(u64 rows, u64* r, int* lane) {
    *r = (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    *lane = threadIdx.x % 32;
    return *r < rows;
}

// lse[r] = log sum_{j<=i} e^(scale s_rj), i = r mod T; s holds the unscaled scores.
extern "C" __global__ void attn_row_lse(float* lse, const float* s, int t, float scale, u64 rows) {
    u64 r;
    int lane;
    if (!warp_row(rows, &r, &lane)) return;
    int i = (int)(r % t);
    const float* row = s + r * t;
    float m = NEG_INF;
    for (int j = lane; j <= i; j += 32) m = fmaxf(m, scale * row[j]);
    m = warp_max(m);
    float l = 0.0f;
    for (int j = lane; j <= i; j += 32) l += expf(scale * row[j] - m);
    l = warp_sum(l);
    if (lane == 0) lse[r] = m + logf(l);
}

// The dropout factor Z of element (r, j).
__device__ __forceinline__ float drop_factor(u64 r, int t, int j, u64 key, float p_drop, float inv_keep) {
    return keep(key, r * t + j, p_drop) ? inv_keep : 0.0f;
}

// p = bf(P): the probabilities (times the dropout factor), zero above the diagonal.
extern "C" __global__ void attn_probs(bf16* p, const float* s, const float* lse, int t, float scale,
                                      u64 key, float p_drop, float inv_keep, int dropout, u64 rows) {
    u64 r;
    int lane;
    if (!warp_row(rows, &r, &lane)) return;
    int i = (int)(r % t);
    float li = lse[r];
    for (int j = lane; j < t; j += 32) {
        float v = 0.0f;
        if (j <= i) {
            v = expf(scale * s[r * t + j] - li);
            if (dropout) v *= drop_factor(r, t, j, key, p_drop, inv_keep);
        }
        p[r * t + j] = bf16_bits(v);
    }
}

// ds = bf(dS) from the unscaled scores s, dp = dO V^T and lse; zero above the diagonal.
extern "C" __global__ void attn_scores_backward(bf16* ds, const float* s, const float* dp, const float* lse,
                                                int t, float scale, u64 key, float p_drop, float inv_keep,
                                                int dropout, u64 rows) {
    u64 r;
    int lane;
    if (!warp_row(rows, &r, &lane)) return;
    int i = (int)(r % t);
    float li = lse[r];
    float dsum = 0.0f;
    for (int j = lane; j <= i; j += 32) {
        float g = dp[r * t + j];
        if (dropout) g *= drop_factor(r, t, j, key, p_drop, inv_keep);
        dsum += expf(scale * s[r * t + j] - li) * g;
    }
    dsum = warp_sum(dsum);
    for (int j = lane; j < t; j += 32) {
        float v = 0.0f;
        if (j <= i) {
            float g = dp[r * t + j];
            if (dropout) g *= drop_factor(r, t, j, key, p_drop, inv_keep);
            v = expf(scale * s[r * t + j] - li) * (g - dsum) * scale;
        }
        ds[r * t + j] = bf16_bits(v);
    }
}
