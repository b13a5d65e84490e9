// Causal self-attention, flash-style: no B x H x T x T tensor. The forward pass keeps each query
// row's log-sum-exp; the backward pass recomputes the probabilities from it.
//
// Per (batch, head), with S = Q K^T * scale (scale = 1/sqrt(hs)) masked to j <= i,
// P = softmax(S), Z the dropout mask (keep / (1-p), else 0), O = (P*Z) V, lse_i = log sum_j e^S_ij:
//   forward (online softmax over key tiles): m = running max, l = sum e^(S-m), acc = sum e^(S-m) Z v;
//     O_i = acc / l,  lse_i = m + log l
//   backward: D_i = dO_i . O_i,  P_ij = e^(S_ij - lse_i),  dP_ij = (dO_i . V_j) Z_ij,
//     dS_ij = P_ij (dP_ij - D_i) scale,  dQ_i = sum_j dS_ij K_j,  dK_j = sum_i dS_ij Q_i,
//     dV_j = sum_i P_ij Z_ij dO_i
// The dropout element of (b, h, i, j) is keep(key, ((b*H + h)*T + i)*T + j), the CPU's index.
// qkv is (B, T, 3C) with q, k, v sections; out and dout are (B, T, C); lse and D are (B, H, T).
//
// One thread owns one output row (a query row for O and dQ, a key row for dK and dV) and walks
// the other side in tiles staged in shared memory, so every sum runs in a fixed order and no
// atomics are needed. The head size is a template bound (32, 64 or 128: registers need a
// compile-time size); entries are suffixed with it, and lanes past the real head size stay zero.
//
// Cached inference (decoding) reads keys and values from the KV cache, laid out
// (row, head, position, hs) within a layer: one warp per (token, head), lanes splitting the keys,
// then the lanes' partial softmaxes merged.

#define ATT_ROWS 64   // threads (rows) per block
#define ATT_TILE 32   // rows of the other side staged in shared memory at a time

template <int HS>
__device__ __forceinline__ void load_row(float* dst, const float* src, int hs) {
#pragma unroll
    for (int d = 0; d < HS; d++) dst[d] = d < hs ? src[d] : 0.0f;
}

template <int HS>
__device__ __forceinline__ float dot_row(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < HS; d++) s += a[d] * b[d];
    return s;
}

// Stages rows [r0, r0 + ATT_TILE) of a strided (T, stride) matrix into tile[ATT_TILE][HS]
// (rows past T are zero). All threads of the block take part.
template <int HS>
__device__ __forceinline__ void stage(float* tile, const float* src, u64 stride, int r0, int t, int hs) {
    for (int e = threadIdx.x; e < ATT_TILE * HS; e += blockDim.x) {
        int r = e / HS, d = e % HS;
        tile[e] = (r0 + r < t && d < hs) ? src[(u64)(r0 + r) * stride + d] : 0.0f;
    }
}

// grid (ceil(T / ATT_ROWS), B*H), block ATT_ROWS.
template <int HS>
__device__ void attention_forward_impl(float* out, float* lse, const float* qkv, int t, int nh, int hs,
                                       float scale, u64 key, float p, float inv_keep, int dropout) {
    __shared__ float ks[ATT_TILE * HS], vs[ATT_TILE * HS];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh;
    int c = nh * hs;
    int i = blockIdx.x * ATT_ROWS + threadIdx.x;
    const float* base = qkv + (u64)b * t * 3 * c + h * hs;
    float q[HS], acc[HS];
    if (i < t) load_row<HS>(q, base + (u64)i * 3 * c, hs);
#pragma unroll
    for (int d = 0; d < HS; d++) acc[d] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    int last = min(t - 1, (int)(blockIdx.x + 1) * ATT_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        __syncthreads();
        stage<HS>(ks, base + c, 3 * c, j0, t, hs);
        stage<HS>(vs, base + 2 * c, 3 * c, j0, t, hs);
        __syncthreads();
        if (i >= t) continue;
        int jn = min(ATT_TILE, i - j0 + 1);
        for (int jj = 0; jj < jn; jj++) {
            int j = j0 + jj;
            float s = dot_row<HS>(q, ks + jj * HS) * scale;
            float m_new = fmaxf(m, s);
            float shrink = expf(m - m_new);
            float e = expf(s - m_new);
            l = l * shrink + e;
            float w = e;
            if (dropout) w = keep(key, ((u64)bh * t + i) * t + j, p) ? e * inv_keep : 0.0f;
#pragma unroll
            for (int d = 0; d < HS; d++) acc[d] = acc[d] * shrink + w * vs[jj * HS + d];
            m = m_new;
        }
    }
    if (i >= t) return;
    float* o = out + ((u64)b * t + i) * c + h * hs;
    float inv_l = 1.0f / l;
#pragma unroll
    for (int d = 0; d < HS; d++)
        if (d < hs) o[d] = acc[d] * inv_l;
    lse[(u64)bh * t + i] = m + logf(l);
}

// D[bh, i] = dO_i . O_i. grid ceil(B*H*T / blockDim.x).
// O and dO are f32, or in bf16 training bf16 (attention_bf16.cu's forward writes O so: only the
// projection's products and this read it; c_proj's backward product writes dO so: only this
// and the flash kernels, which multiply it in bf16, read it).
template <class T>
__device__ void attention_backward_d_impl(float* dd, const T* dout, const T* out, u64 bht, int t, int nh,
                                          int hs) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= bht) return;
    u64 bh = e / t, i = e % t, b = bh / nh, h = bh % nh;
    u64 row = ((b * t + i) * nh + h) * hs;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += load(dout + row + d) * load(out + row + d);
    dd[e] = s;
}

extern "C" __global__ void attention_backward_d(float* dd, const float* dout, const float* out, u64 bht,
                                                int t, int nh, int hs) {
    attention_backward_d_impl(dd, dout, out, bht, t, nh, hs);
}

extern "C" __global__ void attention_backward_d_bf16(float* dd, const bf16* dout, const bf16* out, u64 bht,
                                                     int t, int nh, int hs) {
    attention_backward_d_impl(dd, dout, out, bht, t, nh, hs);
}

// dQ, one thread per query row. dqkv's q section is overwritten. grid (ceil(T / ATT_ROWS), B*H).
template <int HS>
__device__ void attention_backward_dq_impl(float* dqkv, const float* dout, const float* qkv,
                                           const float* lse, const float* dd, int t, int nh, int hs,
                                           float scale, u64 key, float p, float inv_keep, int dropout) {
    __shared__ float ks[ATT_TILE * HS], vs[ATT_TILE * HS];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh;
    int c = nh * hs;
    int i = blockIdx.x * ATT_ROWS + threadIdx.x;
    const float* base = qkv + (u64)b * t * 3 * c + h * hs;
    float q[HS], dob[HS], dq[HS];
    float lse_i = 0.0f, d_i = 0.0f;
    if (i < t) {
        load_row<HS>(q, base + (u64)i * 3 * c, hs);
        load_row<HS>(dob, dout + ((u64)b * t + i) * c + h * hs, hs);
        lse_i = lse[(u64)bh * t + i];
        d_i = dd[(u64)bh * t + i];
    }
#pragma unroll
    for (int d = 0; d < HS; d++) dq[d] = 0.0f;
    int last = min(t - 1, (int)(blockIdx.x + 1) * ATT_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        __syncthreads();
        stage<HS>(ks, base + c, 3 * c, j0, t, hs);
        stage<HS>(vs, base + 2 * c, 3 * c, j0, t, hs);
        __syncthreads();
        if (i >= t) continue;
        int jn = min(ATT_TILE, i - j0 + 1);
        for (int jj = 0; jj < jn; jj++) {
            int j = j0 + jj;
            float pij = expf(dot_row<HS>(q, ks + jj * HS) * scale - lse_i);
            float dp = dot_row<HS>(dob, vs + jj * HS);
            if (dropout) dp *= keep(key, ((u64)bh * t + i) * t + j, p) ? inv_keep : 0.0f;
            float ds = pij * ((dp - d_i) * scale);
#pragma unroll
            for (int d = 0; d < HS; d++) dq[d] += ds * ks[jj * HS + d];
        }
    }
    if (i >= t) return;
    float* dst = dqkv + ((u64)b * t + i) * 3 * c + h * hs;
#pragma unroll
    for (int d = 0; d < HS; d++)
        if (d < hs) dst[d] = dq[d];
}

// dK and dV, one thread per key row j, walking query rows i >= j. dqkv's k and v sections are
// overwritten. grid (ceil(T / ATT_ROWS), B*H).
template <int HS>
__device__ void attention_backward_dkv_impl(float* dqkv, const float* dout, const float* qkv,
                                            const float* lse, const float* dd, int t, int nh, int hs,
                                            float scale, u64 key, float p, float inv_keep, int dropout) {
    __shared__ float qs[ATT_TILE * HS], dos[ATT_TILE * HS], lses[ATT_TILE], ds_[ATT_TILE];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh;
    int c = nh * hs;
    int j = blockIdx.x * ATT_ROWS + threadIdx.x;
    const float* base = qkv + (u64)b * t * 3 * c + h * hs;
    float k[HS], v[HS], dk[HS], dv[HS];
    if (j < t) {
        load_row<HS>(k, base + c + (u64)j * 3 * c, hs);
        load_row<HS>(v, base + 2 * c + (u64)j * 3 * c, hs);
    }
#pragma unroll
    for (int d = 0; d < HS; d++) {
        dk[d] = 0.0f;
        dv[d] = 0.0f;
    }
    int first = blockIdx.x * ATT_ROWS;
    for (int i0 = first - first % ATT_TILE; i0 < t; i0 += ATT_TILE) {
        __syncthreads();
        stage<HS>(qs, base, 3 * c, i0, t, hs);
        stage<HS>(dos, dout + (u64)b * t * c + h * hs, c, i0, t, hs);
        for (int e = threadIdx.x; e < ATT_TILE; e += blockDim.x) {
            lses[e] = i0 + e < t ? lse[(u64)bh * t + i0 + e] : 0.0f;
            ds_[e] = i0 + e < t ? dd[(u64)bh * t + i0 + e] : 0.0f;
        }
        __syncthreads();
        if (j >= t) continue;
        for (int ii = max(0, j - i0); ii < ATT_TILE && i0 + ii < t; ii++) {
            int i = i0 + ii;
            float pij = expf(dot_row<HS>(qs + ii * HS, k) * scale - lses[ii]);
            float z = 1.0f;
            if (dropout) z = keep(key, ((u64)bh * t + i) * t + j, p) ? inv_keep : 0.0f;
            float dp = dot_row<HS>(dos + ii * HS, v) * z;
            float ds = pij * ((dp - ds_[ii]) * scale);
            float pz = pij * z;
#pragma unroll
            for (int d = 0; d < HS; d++) {
                dv[d] += pz * dos[ii * HS + d];
                dk[d] += ds * qs[ii * HS + d];
            }
        }
    }
    if (j >= t) return;
    float* dst = dqkv + ((u64)b * t + j) * 3 * c + h * hs;
#pragma unroll
    for (int d = 0; d < HS; d++)
        if (d < hs) {
            dst[c + d] = dk[d];
            dst[2 * c + d] = dv[d];
        }
}

// Appends a pass's keys and values to the cache: token row r goes to cache row slot[r] at
// position pos[r]. k_cache/v_cache point at this layer's (rows, H, max_t, hs) block.
extern "C" __global__ void kv_cache_write(float* k_cache, float* v_cache, const float* qkv,
                                          const int* slot, const int* pos, u64 n_tok, int nh, int hs,
                                          u64 max_t) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 c = (u64)nh * hs;
    if (e >= n_tok * c) return;
    u64 r = e / c, ci = e % c, h = ci / hs, d = ci % hs;
    u64 dst = (((u64)slot[r] * nh + h) * max_t + pos[r]) * hs + d;
    k_cache[dst] = qkv[r * 3 * c + c + ci];
    v_cache[dst] = qkv[r * 3 * c + 2 * c + ci];
}

// Token row r (query at q + r*q_rs) attends to positions 0..=pos[r] of cache row slot[r].
// One warp per (token, head): blockDim 128 -> 4 (token, head) pairs a block.
template <int HS>
__device__ void attention_cached_impl(float* out, const float* q, u64 q_rs, const float* k_cache,
                                      const float* v_cache, const int* slot, const int* pos, u64 n_tok,
                                      int nh, int hs, u64 max_t, float scale) {
    u64 pair = (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (pair >= n_tok * nh) return;
    u64 r = pair / nh;
    int h = pair % nh;
    float qr[HS], acc[HS];
    load_row<HS>(qr, q + r * q_rs + h * hs, hs);
#pragma unroll
    for (int d = 0; d < HS; d++) acc[d] = 0.0f;
    const float* kb = k_cache + ((u64)slot[r] * nh + h) * max_t * hs;
    const float* vb = v_cache + ((u64)slot[r] * nh + h) * max_t * hs;
    float m = NEG_INF, l = 0.0f;
    for (int j = lane; j <= pos[r]; j += 32) {
        float kj[HS];
        load_row<HS>(kj, kb + (u64)j * hs, hs);
        float s = dot_row<HS>(qr, kj) * scale;
        float m_new = fmaxf(m, s);
        float shrink = expf(m - m_new);
        float e = expf(s - m_new);
        l = l * shrink + e;
#pragma unroll
        for (int d = 0; d < HS; d++) acc[d] = acc[d] * shrink + e * (d < hs ? vb[(u64)j * hs + d] : 0.0f);
        m = m_new;
    }
    // Merge the lanes: rescale each to the warp's max (a lane with no keys has l = acc = 0).
    float m_all = warp_max(m);
    float shrink = expf(m - m_all);
    float l_all = warp_sum(l * shrink);
    float* o = out + r * (u64)nh * hs + h * hs;
#pragma unroll
    for (int d = 0; d < HS; d++) {
        float a = warp_sum(acc[d] * shrink);
        if (d < hs && lane == 0) o[d] = a / l_all;
    }
}

#define ATTENTION_ENTRIES(HS)                                                                        \
    extern "C" __global__ void __launch_bounds__(ATT_ROWS) attention_forward_##HS(                   \
        float* out, float* lse, const float* qkv, int t, int nh, int hs, float scale, u64 key,       \
        float p, float inv_keep, int dropout) {                                                      \
        attention_forward_impl<HS>(out, lse, qkv, t, nh, hs, scale, key, p, inv_keep, dropout);     \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(ATT_ROWS) attention_backward_dq_##HS(               \
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* dd, int t,  \
        int nh, int hs, float scale, u64 key, float p, float inv_keep, int dropout) {                \
        attention_backward_dq_impl<HS>(dqkv, dout, qkv, lse, dd, t, nh, hs, scale, key, p,           \
                                       inv_keep, dropout);                                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(ATT_ROWS) attention_backward_dkv_##HS(              \
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* dd, int t,  \
        int nh, int hs, float scale, u64 key, float p, float inv_keep, int dropout) {                \
        attention_backward_dkv_impl<HS>(dqkv, dout, qkv, lse, dd, t, nh, hs, scale, key, p,          \
                                        inv_keep, dropout);                                          \
    }                                                                                                \
    extern "C" __global__ void attention_cached_##HS(                                                \
        float* out, const float* q, u64 q_rs, const float* k_cache, const float* v_cache,            \
        const int* slot, const int* pos, u64 n_tok, int nh, int hs, u64 max_t, float scale) {        \
        attention_cached_impl<HS>(out, q, q_rs, k_cache, v_cache, slot, pos, n_tok, nh, hs, max_t,   \
                                  scale);                                                            \
    }

ATTENTION_ENTRIES(32)
ATTENTION_ENTRIES(64)
ATTENTION_ENTRIES(128)
