// Causal self-attention for bf16 training, flash-style on the tensor cores: attention.cu's
// algorithm (its header has the math, the dropout index and the layouts) with every product a
// warp's mma.sync (common.cu's mma_bf16_16816), so no T x T tensor is ever stored. qkv and dO
// are bf16 (c_attn's product and c_proj's backward product write them so in bf16 training);
// sums and the softmax's statistics stay f32, and the outputs, which only products (and their
// bias's column sums) read, are written in bf16: O, dQ, dK, dV. Per (b, h), scale = 1/sqrt(hs), j <= i, Z the dropout factor:
//   S_ij = (bf(Q_i) . bf(K_j)) scale
//   forward, online over key tiles: m_i running max, l_i = sum_j e^(S_ij - m_i) (fast_exp),
//     O_i = bf(sum_j bf(e^(S_ij - m_i) Z_ij) bf(V_j) / l_i),   lse_i = m_i + log l_i
//   (O is stored in bf16: only the projection's products and D read it)
//   backward, with P_ij = e^(S_ij - lse_i) and D_i = dO_i . O_i (attention_backward_d, f32 sums):
//     dV_j = sum_i bf(P_ij Z_ij) bf(dO_i),   dP_ij = bf(dO_i) . bf(V_j)
//     dS_ij = P_ij (dP_ij Z_ij - D_i) scale,  dQ_i = sum_j bf(dS_ij) bf(K_j),  dK_j = sum_i bf(dS_ij) bf(Q_i)
//
// A block is four warps; each warp owns 16 of the block's 64 rows (queries for O and dQ, keys for
// dK and dV) and walks the other side 64 rows at a time, staged in shared memory by cp.async
// (the forward and dQ kernels' K and V tiles with the next tile's copy overlapping this one's
// products where two buffers fit: KeyTiles). A
// warp's 16 x 64 scores are eight 16 x 8 mma tiles, whose accumulator fragments are laid out as
// the next product's A fragment wants (see frag_from_acc), so probabilities pass from one
// product to the next in registers. Every output element belongs to one thread and every sum
// runs in a fixed order: no atomics, the same bits on every run. That is why dQ has its own
// kernel (recomputing the scores) rather than atomic adds from the dK/dV kernel.
// The head size is a template bound (32, 64 or 128), columns past the real one are zero.

#define FA_ROWS 64     // rows per block (queries or keys), 16 per warp
#define FA_THREADS 128

// A staged tile: FA_ROWS rows of HS bf16, LD apart (8 bf16 of padding put the rows a warp reads
// at once in different shared-memory banks; rows stay 16-byte aligned for vector stores). Tiles
// are declared 16-byte aligned.
template <int HS>
struct Tile {
    static const int LD = HS + 8;
};

// e^x on the special-function unit (ex2.approx of x log2 e: a couple of ulps). The
// probabilities it makes are rounded to bf16 (8 bits) before they meet V or dO, so the accurate
// expf, a dozen instructions per score (a warp's 16 x 64 tile of scores takes 64 mma.sync and
// 32 exponentials per lane), would cost more than the products and buy nothing.
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }

// 16 bytes (8 bf16) stored as one.
struct alignas(16) Bytes16 {
    unsigned w[4];
};

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)bf16_bits(lo) | ((unsigned)bf16_bits(hi) << 16);
}

// Two bf16 as one register, the first in the low half.
__device__ __forceinline__ unsigned pair_of(bf16 lo, bf16 hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

// tile[r][d] = row r0 + r, column d of a (T, stride) bf16 matrix, zero past T or hs, by the
// whole block: 16 bytes at a time by cp.async where rows and heads allow it (a head size and row
// stride in whole 16-byte vectors, an aligned start: GPT-2's shapes), the copies landing while
// the warps go on (to be waited for: cp_async_wait, then a barrier); else element by element,
// at once. Zeros are stored at once.
template <int HS>
__device__ __forceinline__ void stage(bf16* tile, const bf16* src, u64 stride, int r0, int t, int hs) {
    if (hs % 8 == 0 && stride % 8 == 0 && (u64)src % 16 == 0) {
        for (int e = threadIdx.x; e < FA_ROWS * HS / 8; e += blockDim.x) {
            int r = e / (HS / 8), d = e % (HS / 8) * 8;
            bf16* dst = tile + r * Tile<HS>::LD + d;
            if (r0 + r < t && d < hs)
                cp_async16(dst, src + (u64)(r0 + r) * stride + d);
            else
                *reinterpret_cast<Bytes16*>(dst) = Bytes16{{0, 0, 0, 0}};
        }
        return;
    }
    for (int e = threadIdx.x; e < FA_ROWS * HS; e += blockDim.x) {
        int r = e / HS, d = e % HS;
        tile[r * Tile<HS>::LD + d] = (r0 + r < t && d < hs) ? src[(u64)(r0 + r) * stride + d] : (bf16)0;
    }
}

// A walk over key tiles 0, 64, .. of one (b, h): K and V staged in shared memory, in two
// buffers where they fit the 48 KB of static shared memory (HS <= 64), so that tile i + 1's
// copy runs while the warps multiply tile i; in one otherwise. `ks`, `vs`: BUFFERS * SIZE bf16.
template <int HS>
struct KeyTiles {
    static const int BUFFERS = HS <= 64 ? 2 : 1;
    static const int SIZE = FA_ROWS * Tile<HS>::LD;
};

// Starts copying key tile i (rows 64 i.. of this head's K and V; base: its q section in qkv)
// into its buffer, as one cp.async group.
template <int HS>
__device__ __forceinline__ void fetch_keys(bf16* ks, bf16* vs, const bf16* base, int c, int i, int t, int hs) {
    int at = i % KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE;
    stage<HS>(ks + at, base + c, 3 * c, i * FA_ROWS, t, hs);
    stage<HS>(vs + at, base + 2 * c, 3 * c, i * FA_ROWS, t, hs);
    cp_async_commit();
}

// Makes key tile i ready in its buffer for the whole block, tile 0 having been fetched before
// the walk and every tile's readers ending with a barrier (so no buffer is overwritten while
// read): with two buffers it first starts tile i + 1's copy, and waits for tile i's alone.
template <int HS>
__device__ __forceinline__ void keys_ready(bf16* ks, bf16* vs, const bf16* base, int c, int i, int tiles, int t,
                                           int hs) {
    if (KeyTiles<HS>::BUFFERS == 1) {
        if (i > 0) fetch_keys<HS>(ks, vs, base, c, i, t, hs);
        cp_async_wait<0>();
    } else if (i + 1 < tiles) {
        fetch_keys<HS>(ks, vs, base, c, i + 1, t, hs);
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

template <int HS>
__device__ __forceinline__ void zero(float acc[HS / 8][4]) {
#pragma unroll
    for (int n = 0; n < HS / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
}

// A fragments (16 x HS, in HS/16 steps of 16 columns) of rows r0..r0+15 of a (T, stride) bf16
// matrix, read once from global memory; zero past T or hs. See common.cu for the layout.
template <int HS>
__device__ __forceinline__ void frags_from_global(unsigned f[HS / 16][4], const bf16* src, u64 stride, int r0,
                                                  int t, int hs) {
    int g = (threadIdx.x % 32) / 4, q = threadIdx.x % 4;
#pragma unroll
    for (int k = 0; k < HS / 16; k++) {
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int row = r0 + g + (r & 1) * 8, col = k * 16 + 2 * q + (r >> 1) * 8;
            bf16 lo = 0, hi = 0;
            if (row < t) {
                const bf16* x = src + (u64)row * stride;
                if (col < hs) lo = x[col];
                if (col + 1 < hs) hi = x[col + 1];
            }
            f[k][r] = pair_of(lo, hi);
        }
    }
}

// B fragment (16 x 8) at (k0, n0) of B = M^T, M a staged tile (rows are B's columns): the
// pairs run along M's rows. b[0] = M[n0 + g][k0 + 2q, +1], b[1] the same 8 columns on: one
// ldmatrix of rows n0..n0+7 at columns k0.. and k0+8.. (lane l gives row n0 + l % 8 of matrix
// (l / 8) % 2; lanes 16-31 repeat 0-15, unread).
template <int HS>
__device__ __forceinline__ void frag_b_rows(unsigned b[2], const bf16* m, int k0, int n0) {
    int lane = threadIdx.x % 32;
    ldmatrix_x2(b, m + (n0 + lane % 8) * Tile<HS>::LD + k0 + 8 * ((lane / 8) % 2), false);
}

// B fragment (16 x 8) at (k0, n0) of B = M, a staged tile: the pairs run down M's columns.
// b[0] = M[k0 + 2q, +1][n0 + g], b[1] 8 rows on: one transposing ldmatrix of rows k0..k0+7 and
// k0+8..k0+15 at columns n0..n0+7 (lane l gives row k0 + 8 ((l / 8) % 2) + l % 8).
template <int HS>
__device__ __forceinline__ void frag_b_cols(unsigned b[2], const bf16* m, int k0, int n0) {
    int lane = threadIdx.x % 32;
    ldmatrix_x2(b, m + (k0 + 8 * ((lane / 8) % 2) + lane % 8) * Tile<HS>::LD + n0, true);
}

// The A fragment (16 x 16) of columns 16k..16k+15 of a warp's 16 x 64 f32 tile held as eight
// accumulator tiles: tiles 2k and 2k+1 hold exactly the elements A's registers want, rounded.
__device__ __forceinline__ void frag_from_acc(unsigned a[4], const float s[8][4], int k) {
    a[0] = pack_bf16(s[2 * k][0], s[2 * k][1]);
    a[1] = pack_bf16(s[2 * k][2], s[2 * k][3]);
    a[2] = pack_bf16(s[2 * k + 1][0], s[2 * k + 1][1]);
    a[3] = pack_bf16(s[2 * k + 1][2], s[2 * k + 1][3]);
}

// s = A M^T for a warp's 16 rows (A as HS/16 fragments) against the 64 rows of staged tile M:
// the warp's 16 x 64 (unscaled) products.
template <int HS>
__device__ __forceinline__ void products(float s[8][4], const unsigned a[HS / 16][4], const bf16* m) {
#pragma unroll
    for (int n = 0; n < 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
#pragma unroll
        for (int k = 0; k < HS / 16; k++) {
            unsigned b[2];
            frag_b_rows<HS>(b, m, 16 * k, 8 * n);
            mma_bf16_16816(s[n], a[k], b);
        }
    }
}

// acc (16 x HS) += P M for a warp's 16 x 64 tile P (accumulator layout) and staged tile M.
template <int HS>
__device__ __forceinline__ void accumulate(float acc[HS / 8][4], const float p[8][4], const bf16* m) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        unsigned a[4];
        frag_from_acc(a, p, k);
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            unsigned b[2];
            frag_b_cols<HS>(b, m, 16 * k, 8 * n);
            mma_bf16_16816(acc[n], a, b);
        }
    }
}

// Accumulator element e of tile n: its row within the warp's 16 and its column within the 64.
__device__ __forceinline__ int acc_row(int e) {
    return (threadIdx.x % 32) / 4 + (e >> 1) * 8;
}
__device__ __forceinline__ int acc_col(int n, int e) {
    return 8 * n + 2 * (threadIdx.x % 4) + (e & 1);
}

// Writes a warp's 16 x HS accumulator, times the row's factor, to rows r0.. of a (T, stride)
// f32 or bf16 matrix; rows past T and columns past hs are not written.
template <int HS, class Out>
__device__ __forceinline__ void store_rows(Out* dst, u64 stride, const float acc[HS / 8][4], int r0,
                                           const float factor[2], int t, int hs) {
#pragma unroll
    for (int n = 0; n < HS / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = r0 + acc_row(e), col = acc_col(n, e);
            if (row < t && col < hs) store(dst + (u64)row * stride + col, acc[n][e] * factor[e >> 1]);
        }
}

// Sum over the four lanes that share a row of an accumulator tile.
__device__ __forceinline__ float row_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float row_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// grid (ceil(T / FA_ROWS), B*H), block FA_THREADS: out (B, T, C), in bf16 (only the projection's
// products and attention_backward_d read it), and lse (B, H, T).
template <int HS>
__device__ void flash_forward_impl(bf16* out, float* lse, const bf16* qkv, int t, int nh, int hs, float scale,
                                   u64 key, float p, float inv_keep, int dropout) {
    alignas(16) __shared__ bf16 ks[KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE];
    alignas(16) __shared__ bf16 vs[KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh, c = nh * hs;
    int q0 = blockIdx.x * FA_ROWS, r0 = q0 + (threadIdx.x / 32) * 16;
    const bf16* base = qkv + (u64)b * t * 3 * c + h * hs;
    unsigned qf[HS / 16][4];
    frags_from_global<HS>(qf, base, 3 * c, r0, t, hs);
    float acc[HS / 8][4];
    zero<HS>(acc);
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    int last = min(t, q0 + FA_ROWS) - 1, tiles = last / FA_ROWS + 1;
    fetch_keys<HS>(ks, vs, base, c, 0, t, hs);
    for (int tile = 0; tile < tiles; tile++) {
        int k0 = tile * FA_ROWS, at = tile % KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE;
        keys_ready<HS>(ks, vs, base, c, tile, tiles, t, hs);
        float s[8][4];
        products<HS>(s, qf, ks + at);
        float m_new[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = r0 + acc_row(e), j = k0 + acc_col(n, e);
                s[n][e] = (j <= i && j < t) ? s[n][e] * scale : NEG_INF;
                m_new[e >> 1] = fmaxf(m_new[e >> 1], s[n][e]);
            }
        float shrink[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            // Key 0 is in the first tile and every row sees it, so m_new is finite.
            m_new[r] = row_max(m_new[r]);
            shrink[r] = fast_exp(m[r] - m_new[r]);
            l[r] *= shrink[r];
            m[r] = m_new[r];
        }
#pragma unroll
        for (int n = 0; n < HS / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] *= shrink[e >> 1];
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float w = fast_exp(s[n][e] - m[e >> 1]);
                l[e >> 1] += w;
                if (dropout) {
                    int i = r0 + acc_row(e), j = k0 + acc_col(n, e);
                    w = keep(key, ((u64)bh * t + i) * t + j, p) ? w * inv_keep : 0.0f;
                }
                s[n][e] = w;
            }
        accumulate<HS>(acc, s, vs + at);
        __syncthreads();
    }
    float inv_l[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] = row_sum(l[r]);
        inv_l[r] = 1.0f / l[r];
    }
    store_rows<HS>(out + (u64)b * t * c + h * hs, c, acc, r0, inv_l, t, hs);
    if (threadIdx.x % 4 == 0)
        for (int r = 0; r < 2; r++) {
            int i = r0 + acc_row(2 * r);
            if (i < t) lse[(u64)bh * t + i] = m[r] + logf(l[r]);
        }
}

// dQ (dqkv's q section, overwritten); dd holds D (attention_backward_d). Grid as forward.
template <int HS>
__device__ void flash_backward_dq_impl(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                       const float* dd, int t, int nh, int hs, float scale, u64 key, float p,
                                       float inv_keep, int dropout) {
    alignas(16) __shared__ bf16 ks[KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE];
    alignas(16) __shared__ bf16 vs[KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh, c = nh * hs;
    int q0 = blockIdx.x * FA_ROWS, r0 = q0 + (threadIdx.x / 32) * 16;
    const bf16* base = qkv + (u64)b * t * 3 * c + h * hs;
    unsigned qf[HS / 16][4], df[HS / 16][4];
    frags_from_global<HS>(qf, base, 3 * c, r0, t, hs);
    frags_from_global<HS>(df, dout + (u64)b * t * c + h * hs, c, r0, t, hs);
    float lse_r[2], d_r[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int i = r0 + acc_row(2 * r);
        lse_r[r] = i < t ? lse[(u64)bh * t + i] : 0.0f;
        d_r[r] = i < t ? dd[(u64)bh * t + i] : 0.0f;
    }
    float acc[HS / 8][4];
    zero<HS>(acc);
    int last = min(t, q0 + FA_ROWS) - 1, tiles = last / FA_ROWS + 1;
    fetch_keys<HS>(ks, vs, base, c, 0, t, hs);
    for (int tile = 0; tile < tiles; tile++) {
        int k0 = tile * FA_ROWS, at = tile % KeyTiles<HS>::BUFFERS * KeyTiles<HS>::SIZE;
        keys_ready<HS>(ks, vs, base, c, tile, tiles, t, hs);
        float s[8][4], dp[8][4];
        products<HS>(s, qf, ks + at);
        products<HS>(dp, df, vs + at);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = r0 + acc_row(e), j = k0 + acc_col(n, e);
                float ds = 0.0f;
                if (j <= i && i < t) {
                    float g = dp[n][e];
                    if (dropout) g = keep(key, ((u64)bh * t + i) * t + j, p) ? g * inv_keep : 0.0f;
                    ds = fast_exp(s[n][e] * scale - lse_r[e >> 1]) * (g - d_r[e >> 1]) * scale;
                }
                s[n][e] = ds;
            }
        accumulate<HS>(acc, s, ks + at);
        __syncthreads();
    }
    const float one[2] = {1.0f, 1.0f};
    store_rows<HS>(dqkv + (u64)b * t * 3 * c + h * hs, 3 * c, acc, r0, one, t, hs);
}

// dK and dV (dqkv's k and v sections, overwritten). grid (ceil(T / FA_ROWS), B*H): block x owns
// keys 64x.., and walks the query tiles that can see them (from its own on).
template <int HS>
__device__ void flash_backward_dkv_impl(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                        const float* dd, int t, int nh, int hs, float scale, u64 key, float p,
                                        float inv_keep, int dropout) {
    alignas(16) __shared__ bf16 qs[FA_ROWS * Tile<HS>::LD];
    alignas(16) __shared__ bf16 dos[FA_ROWS * Tile<HS>::LD];
    __shared__ float lse_s[FA_ROWS], d_s[FA_ROWS];
    int bh = blockIdx.y, b = bh / nh, h = bh % nh, c = nh * hs;
    int k0 = blockIdx.x * FA_ROWS, r0 = k0 + (threadIdx.x / 32) * 16;
    const bf16* base = qkv + (u64)b * t * 3 * c + h * hs;
    const bf16* dbase = dout + (u64)b * t * c + h * hs;
    unsigned kf[HS / 16][4], vf[HS / 16][4];
    frags_from_global<HS>(kf, base + c, 3 * c, r0, t, hs);
    frags_from_global<HS>(vf, base + 2 * c, 3 * c, r0, t, hs);
    float dk[HS / 8][4], dv[HS / 8][4];
    zero<HS>(dk);
    zero<HS>(dv);
    for (int q0 = k0; q0 < t; q0 += FA_ROWS) {
        __syncthreads();
        stage<HS>(qs, base, 3 * c, q0, t, hs);
        stage<HS>(dos, dbase, c, q0, t, hs);
        cp_async_commit();
        for (int r = threadIdx.x; r < FA_ROWS; r += blockDim.x) {
            int i = q0 + r;
            lse_s[r] = i < t ? lse[(u64)bh * t + i] : 0.0f;
            d_s[r] = i < t ? dd[(u64)bh * t + i] : 0.0f;
        }
        cp_async_wait<0>();
        __syncthreads();
        // The transposed scores S^T and dP^T: the warp's 16 keys against the tile's 64 queries.
        float s[8][4], dp[8][4];
        products<HS>(s, kf, qs);
        products<HS>(dp, vf, dos);
        unsigned kept = 0;  // bit 4n + e: element (n, e) survives dropout
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = r0 + acc_row(e), ii = acc_col(n, e), i = q0 + ii;
                float pr = 0.0f;
                if (j <= i && i < t && j < t) {
                    pr = fast_exp(s[n][e] * scale - lse_s[ii]);
                    if (!dropout || keep(key, ((u64)bh * t + i) * t + j, p)) kept |= 1u << (4 * n + e);
                }
                s[n][e] = pr;
            }
        float z = dropout ? inv_keep : 1.0f;
        // dV += (P Z)^T dO, then dK += dS^T Q with dS in dp's registers.
        float pz[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                bool on = (kept >> (4 * n + e)) & 1u;
                pz[n][e] = on ? s[n][e] * z : 0.0f;
                float g = on ? dp[n][e] * z : 0.0f;
                dp[n][e] = s[n][e] * (g - d_s[acc_col(n, e)]) * scale;
            }
        accumulate<HS>(dv, pz, dos);
        accumulate<HS>(dk, dp, qs);
    }
    const float one[2] = {1.0f, 1.0f};
    bf16* dbase_k = dqkv + (u64)b * t * 3 * c + h * hs;
    store_rows<HS>(dbase_k + c, 3 * c, dk, r0, one, t, hs);
    store_rows<HS>(dbase_k + 2 * c, 3 * c, dv, r0, one, t, hs);
}

#define FLASH_KERNELS(HS)                                                                                   \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_forward_##HS(                            \
        bf16* out, float* lse, const bf16* qkv, int t, int nh, int hs, float scale, u64 key, float p,      \
        float inv_keep, int dropout) {                                                                      \
        flash_forward_impl<HS>(out, lse, qkv, t, nh, hs, scale, key, p, inv_keep, dropout);                 \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_dq_##HS(                        \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dd, int t, int nh, \
        int hs, float scale, u64 key, float p, float inv_keep, int dropout) {                               \
        flash_backward_dq_impl<HS>(dqkv, dout, qkv, lse, dd, t, nh, hs, scale, key, p, inv_keep, dropout); \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_dkv_##HS(                       \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dd, int t, int nh, \
        int hs, float scale, u64 key, float p, float inv_keep, int dropout) {                               \
        flash_backward_dkv_impl<HS>(dqkv, dout, qkv, lse, dd, t, nh, hs, scale, key, p, inv_keep, dropout);\
    }

FLASH_KERNELS(32)
FLASH_KERNELS(64)
FLASH_KERNELS(128)
