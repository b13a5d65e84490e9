//! Training attention in bf16 (`dtype = "bfloat16"`): its four products per pass on the tensor
//! cores as cuBLASLt batched bf16 GEMMs over (batch, head), the softmax and the layout changes
//! in `kernels/cuda/attention_bf16.cu` (whose header has the math). The f32 engine keeps
//! `attention.cu`, whose fixed-order sums match the CPU's to rounding.
//!
//! Each (batch, head) is one product of a strided batch; in cuBLASLt's column-major terms a
//! row-major (r x c) matrix is (c x r), so, per head, with Q, K, V, dO (T x hs) and S, P (T x T):
//!   scores   S^T (T x T)   = K  Q^T   [ta]  (also dP = dO V^T: A = V, B = dO)
//!   mix      O^T (hs x T)  = V^T P^T        (also dQ = dS K:    A = K, B = dS)
//!   mix_t    dV^T (hs x T) = dO^T P   [tb]  (also dK = dS^T Q:  A = Q, B = dS)

use super::blas::{Batch, Gemm};
use super::ops::{AttnShape, Gpu};
use anyhow::Result;

/// The three product shapes (see the header); A and B are bf16, D f32.
fn product(a: AttnShape, kind: Product) -> Gemm {
    let (t, hs) = (a.t, a.hs);
    let (ta, tb, m, k, ldb) = match kind {
        Product::Scores => (true, false, t, hs, hs),
        Product::Mix => (false, false, hs, t, t),
        Product::MixT => (false, true, hs, t, t),
    };
    Gemm {
        ta,
        tb,
        m,
        n: t,
        k,
        lda: hs,
        ldb,
        ldd: m,
        accumulate: false,
        bias: false,
        bf16: true,
        // Each head's matrices lie one after another: t columns of their leading dimension.
        batch: Some(Batch {
            count: a.b * a.nh,
            stride_a: hs * t,
            stride_b: ldb * t,
            stride_d: m * t,
        }),
    }
}

#[derive(Clone, Copy)]
enum Product {
    Scores,
    Mix,
    MixT,
}

/// Elements of one of Q, K, V (B*T*C) and of the scores (B*H*T*T).
fn sizes(a: AttnShape) -> (usize, usize) {
    (a.head_elements(), a.score_rows() * a.t)
}

impl Gpu {
    /// The bf16 (B, H, T, hs) copies of qkv's q, k and v sections.
    fn split_qkv(&self, dst: [u64; 3], qkv: u64, a: AttnShape) -> Result<()> {
        let c = a.nh * a.hs;
        for (section, dst) in dst.into_iter().enumerate() {
            self.heads_to_bf16(dst, qkv + (4 * section * c) as u64, 3 * c, a)?;
        }
        Ok(())
    }

    /// out (B, T, C) and lse (B, H, T) from qkv (B, T, 3C), in bf16 on the tensor cores.
    pub fn attention_forward_bf16(&self, out: u64, lse: u64, qkv: u64, a: AttnShape) -> Result<()> {
        let (heads, scores) = sizes(a);
        let [q, k, v, s, p, o] = self.carve([
            2 * heads,
            2 * heads,
            2 * heads,
            4 * scores,
            2 * scores,
            4 * heads,
        ])?;
        self.split_qkv([q, k, v], qkv, a)?;
        self.gemm(product(a, Product::Scores), k, q, s, None)?;
        self.attn_row_lse(lse, s, a)?;
        self.attn_probs(p, s, lse, a)?;
        self.gemm(product(a, Product::Mix), v, p, o, None)?;
        self.heads_merge(out, a.nh * a.hs, o, a)
    }

    /// dqkv (B, T, 3C), overwritten, from dout (B, T, C), qkv and the forward pass's lse.
    pub fn attention_backward_bf16(
        &self,
        dqkv: u64,
        dout: u64,
        qkv: u64,
        lse: u64,
        a: AttnShape,
    ) -> Result<()> {
        let (heads, scores) = sizes(a);
        let [q, k, v, d_out, s, dp, p, grad] = self.carve([
            2 * heads,
            2 * heads,
            2 * heads,
            2 * heads,
            4 * scores,
            4 * scores,
            2 * scores,
            4 * heads,
        ])?;
        self.split_qkv([q, k, v], qkv, a)?;
        let c = a.nh * a.hs;
        self.heads_to_bf16(d_out, dout, c, a)?;
        self.gemm(product(a, Product::Scores), k, q, s, None)?;
        self.attn_probs(p, s, lse, a)?;
        let to_dqkv = |section: usize| dqkv + (4 * section * c) as u64;
        // dV = P^T dO, then P's buffer takes dS.
        self.gemm(product(a, Product::MixT), d_out, p, grad, None)?;
        self.heads_merge(to_dqkv(2), 3 * c, grad, a)?;
        self.gemm(product(a, Product::Scores), v, d_out, dp, None)?;
        let ds = p;
        self.attn_scores_backward(ds, s, dp, lse, a)?;
        self.gemm(product(a, Product::Mix), k, ds, grad, None)?;
        self.heads_merge(to_dqkv(0), 3 * c, grad, a)?;
        self.gemm(product(a, Product::MixT), q, ds, grad, None)?;
        self.heads_merge(to_dqkv(1), 3 * c, grad, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// cuBLASLt's product as its documentation defines it (column-major, op(X) = X or X^T by
    /// the transpose flags, batch i at i * stride), in f64: D = op(A) op(B).
    fn cublaslt(g: Gemm, a: &[f32], b: &[f32]) -> Vec<f64> {
        let batch = g.batch.expect("batched");
        let mut d = vec![0.0; batch.count * batch.stride_d];
        for bi in 0..batch.count {
            let (a, b) = (&a[bi * batch.stride_a..], &b[bi * batch.stride_b..]);
            for col in 0..g.n {
                for row in 0..g.m {
                    let mut sum = 0.0;
                    for p in 0..g.k {
                        let x = if g.ta {
                            a[p + row * g.lda]
                        } else {
                            a[row + p * g.lda]
                        };
                        let y = if g.tb {
                            b[col + p * g.ldb]
                        } else {
                            b[p + col * g.ldb]
                        };
                        sum += x as f64 * y as f64;
                    }
                    d[bi * batch.stride_d + row + col * g.ldd] = sum;
                }
            }
        }
        d
    }

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Each product table entry computes the math of the header, per head, row-major: S = Q K^T,
    /// O = P V, dV = P^T dO (and, the same shapes, dP = dO V^T, dQ = dS K, dK = dS^T Q).
    #[test]
    fn the_product_shapes_compute_attentions_math() {
        let a = AttnShape {
            b: 2,
            t: 5,
            nh: 3,
            hs: 4,
            drop: None,
        };
        let (t, hs, heads) = (a.t, a.hs, a.b * a.nh);
        let mut rng = Rng::new(9);
        let (q, k) = (
            random(heads * t * hs, &mut rng),
            random(heads * t * hs, &mut rng),
        );
        let p = random(heads * t * t, &mut rng);
        let s = cublaslt(product(a, Product::Scores), &k, &q);
        let o = cublaslt(product(a, Product::Mix), &k, &p);
        let dv = cublaslt(product(a, Product::MixT), &q, &p);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        for h in 0..heads {
            let (q, k, p) = (&q[h * t * hs..], &k[h * t * hs..], &p[h * t * t..]);
            for i in 0..t {
                for j in 0..t {
                    let want: f64 = (0..hs)
                        .map(|d| q[i * hs + d] as f64 * k[j * hs + d] as f64)
                        .sum();
                    assert!(close(s[h * t * t + i * t + j], want), "S[{h}][{i}][{j}]");
                }
                for d in 0..hs {
                    let want: f64 = (0..t)
                        .map(|j| p[i * t + j] as f64 * k[j * hs + d] as f64)
                        .sum();
                    assert!(close(o[h * t * hs + i * hs + d], want), "O[{h}][{i}][{d}]");
                    let want: f64 = (0..t)
                        .map(|j| p[j * t + i] as f64 * q[j * hs + d] as f64)
                        .sum();
                    assert!(
                        close(dv[h * t * hs + i * hs + d], want),
                        "dV[{h}][{i}][{d}]"
                    );
                }
            }
        }
    }
}
