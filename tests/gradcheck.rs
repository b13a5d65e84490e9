//! Gradient checks: every kernel's backward pass, and the whole model's, against central finite
//! differences of the f32 forward pass.
//!
//! Method. For a kernel y = f(x1, x2, ...) the scalar is L = sum(y * R) for a fixed random R,
//! summed in f64, and the analytic gradient is the kernel's backward pass with dy = R. For
//! cross-entropy the scalar is its mean loss; for the model, its loss (recomputed in f64 from its
//! f32 logits, see `model_case`). A finite difference moves one f32 element by +-h and divides by
//! the step f32 actually represents, (x+h) - (x-h) in f64. Tensors of up to 300 elements are
//! checked on every element, larger ones on 50 random elements; the model on the largest-gradient
//! element and one or two random ones of every parameter tensor (42 to 68 per case).
//!
//! Metric, per tensor: err = max_i |fd_i - an_i| / max(max_j |an_j|, 1e-3), i over the checked
//! elements, j over the whole tensor (so entries near zero are judged at the tensor's scale).
//!
//! Tolerances, and why they are honest:
//! - kernels: h = 1e-2, err <= 1e-3. Inputs are O(1), so the O(h^2) truncation error is ~1e-5
//!   and f32 rounding of the outputs contributes ~1e-7 / h ~ 1e-5. Measured worst: layernorm
//!   6.3e-5, crossentropy 4.0e-5, attention 2.7e-5 (1.2e-5 at T=5), encoder 1.5e-5, matmul
//!   1.6e-5, gelu 8.6e-6, dropout 1.9e-6, residual 9.3e-7; for Llama: rmsnorm 2.8e-5,
//!   grouped-query attention 9.5e-6, swiglu 4.4e-6, rope 3.4e-6.
//! - model: h = 3e-3, err <= 5e-3. Many more f32 roundings sit between a parameter and the loss,
//!   and LayerNorm amplifies small embeddings' curvature; at h = 1e-2 truncation reaches 4.8e-3
//!   with dropout, at h = 1e-3 rounding reaches 9e-4. Measured worst at h = 3e-3: 8.2e-4.
//!
//! Both are 6x or more above what was measured and 20x or more below the 10% error of the
//! negative control: every tensor check also asserts that the analytic gradient scaled by 1.1
//! would fail (wherever the checked elements include one of at least 3% of the tensor's scale
//! for the kernels, 15% for the model, so that the control has a 3x margin; each case asserts
//! that at least one control ran), and `negative_controls` asserts that a scaled gradient,
//! one element off by 2%, two elements swapped and a LayerNorm or RMSNorm backward missing a
//! term all fail.
//!
//! Run `cargo test --release --test gradcheck -- --nocapture` to see the measured errors.

use nanogpt::config::GptConfig;
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, Mode};
use nanogpt::kernels::cpu::attention::{
    attention_backward, attention_forward, AttnDims, AttnDropout,
};
use nanogpt::kernels::cpu::crossentropy::{
    count_valid, crossentropy_backward_inplace, crossentropy_forward,
};
use nanogpt::kernels::cpu::dropout::dropout_inplace;
use nanogpt::kernels::cpu::encoder::{encoder_backward, encoder_forward};
use nanogpt::kernels::cpu::gelu::{gelu_backward_inplace, gelu_forward};
use nanogpt::kernels::cpu::layernorm::{layernorm_backward, layernorm_forward};
use nanogpt::kernels::cpu::matmul::{matmul_backward, matmul_forward, Layout, Precision};
use nanogpt::kernels::cpu::residual::residual_forward;
use nanogpt::kernels::cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use nanogpt::kernels::cpu::rope::{rope_backward, rope_forward, RopeTable};
use nanogpt::kernels::cpu::swiglu::{swiglu_backward, swiglu_forward};
use nanogpt::model::Gpt;
use nanogpt::rng::Rng;

/// Finite-difference step for the kernels (inputs are O(1)).
const KERNEL_H: f32 = 1e-2;
/// Relative tolerance for the kernels (see the header).
const KERNEL_TOL: f64 = 1e-3;
/// Finite-difference step for the whole model.
const MODEL_H: f32 = 3e-3;
/// Relative tolerance for the whole model (see the header).
const MODEL_TOL: f64 = 5e-3;
/// Std of the model's weights and embeddings for the check.
const WEIGHT_STD: f64 = 0.3;
/// Lower bound of the per-tensor scale, so an all-zero gradient is compared in absolute terms.
const FLOOR: f64 = 1e-3;
/// Tensors up to this size are checked on every element; larger ones on `SAMPLE` random ones.
const ALL_UP_TO: usize = 300;
const SAMPLE: usize = 50;

fn randn(rng: &mut Rng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    (0..n).map(|_| (mean + std * rng.normal()) as f32).collect()
}

/// sum(y * r) in f64.
fn weighted_sum(y: &[f32], r: &[f32]) -> f64 {
    assert_eq!(y.len(), r.len());
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

/// Indices to check: all of them for small tensors, else `SAMPLE` distinct random ones.
fn sample(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if n <= ALL_UP_TO {
        return idx;
    }
    for i in 0..SAMPLE {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(SAMPLE);
    idx
}

/// The outcome of comparing one tensor's gradient.
struct Cmp {
    /// max |fd - an| / scale over the checked elements.
    err: f64,
    /// The same with the analytic gradient scaled by 1.1 (the negative control).
    err_scaled: f64,
    /// Whether the control has a margin: the checked elements include one large enough that a
    /// 10% error on it must exceed the tolerance.
    control_meaningful: bool,
}

fn compare(fd: &[f64], an: &[f64], scale: f64, tol: f64) -> Cmp {
    let dev = |k: f64| {
        fd.iter()
            .zip(an)
            .fold(0.0f64, |m, (&f, &a)| m.max((f - k * a).abs()))
            / scale
    };
    let sampled_max = an.iter().fold(0.0f64, |m, &a| m.max(a.abs()));
    Cmp {
        err: dev(1.0),
        err_scaled: dev(1.1),
        control_meaningful: 0.1 * sampled_max / scale > 3.0 * tol,
    }
}

/// Asserts `cmp` is within `tol` and that the negative control (analytic x 1.1) would fail.
/// Returns whether the control ran.
fn assert_cmp(label: &str, cmp: &Cmp, tol: f64) -> bool {
    assert!(
        cmp.err <= tol,
        "{label}: finite differences disagree with the backward pass: rel err {:.3e} > {tol:.1e}",
        cmp.err
    );
    if cmp.control_meaningful {
        assert!(
            cmp.err_scaled > tol,
            "{label}: negative control passed (rel err {:.3e} with the gradient x1.1): the check cannot fail",
            cmp.err_scaled
        );
    }
    cmp.control_meaningful
}

/// Central difference of `f` with respect to element `i` of `inputs[k]`, divided by the step
/// actually represented in f32.
fn central_diff(
    inputs: &mut [Vec<f32>],
    k: usize,
    i: usize,
    h: f32,
    f: &dyn Fn(&[Vec<f32>]) -> f64,
) -> f64 {
    let x = inputs[k][i];
    let (xp, xm) = (x + h, x - h);
    inputs[k][i] = xp;
    let fp = f(inputs);
    inputs[k][i] = xm;
    let fm = f(inputs);
    inputs[k][i] = x;
    (fp - fm) / (xp as f64 - xm as f64)
}

/// Checks the analytic gradient of every input tensor against finite differences of `f`.
/// Returns the worst relative error.
fn check(
    case: &str,
    names: &[&str],
    inputs: &mut [Vec<f32>],
    analytic: &[Vec<f32>],
    rng: &mut Rng,
    f: &dyn Fn(&[Vec<f32>]) -> f64,
) -> f64 {
    assert_eq!(names.len(), inputs.len());
    assert_eq!(analytic.len(), inputs.len());
    let mut worst = 0.0f64;
    let mut controls = 0;
    let mut report = String::new();
    for k in 0..inputs.len() {
        assert_eq!(inputs[k].len(), analytic[k].len(), "{case}: {}", names[k]);
        let idx = sample(rng, inputs[k].len());
        let fd: Vec<f64> = idx
            .iter()
            .map(|&i| central_diff(inputs, k, i, KERNEL_H, f))
            .collect();
        let an: Vec<f64> = idx.iter().map(|&i| analytic[k][i] as f64).collect();
        let scale = max_abs(&analytic[k]).max(FLOOR);
        let cmp = compare(&fd, &an, scale, KERNEL_TOL);
        controls += assert_cmp(&format!("{case} d/d{}", names[k]), &cmp, KERNEL_TOL) as usize;
        report += &format!(" {}={:.1e}", names[k], cmp.err);
        worst = worst.max(cmp.err);
    }
    assert!(controls > 0, "{case}: no negative control could run");
    println!("{case:<34} worst {worst:.2e}  ({})", report.trim());
    worst
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

fn layernorm_case(rows: usize, c: usize, with_bias: bool, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let x = randn(&mut rng, rows * c, 0.5, 1.0);
    let w = randn(&mut rng, c, 1.0, 0.3);
    let bias = randn(&mut rng, c, 0.0, 0.3);
    let r = randn(&mut rng, rows * c, 0.0, 1.0);
    let forward = |x: &[f32], w: &[f32], b: Option<&[f32]>| {
        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&mut y, &mut mean, &mut rstd, x, w, b, c);
        (y, mean, rstd)
    };
    let (_, mean, rstd) = forward(&x, &w, with_bias.then_some(&bias[..]));
    // Every output accumulates (+=): start from garbage and subtract it afterwards.
    let g0 = randn(&mut rng, rows * c + 2 * c, 0.0, 1.0);
    let (mut dx, mut dw, mut db) = (
        g0[..rows * c].to_vec(),
        g0[rows * c..rows * c + c].to_vec(),
        g0[rows * c + c..].to_vec(),
    );
    layernorm_backward(
        &mut dx,
        &mut dw,
        with_bias.then_some(&mut db[..]),
        &r,
        &x,
        &w,
        &mean,
        &rstd,
        c,
    );
    let sub = |d: &[f32], g: &[f32]| -> Vec<f32> { d.iter().zip(g).map(|(a, b)| a - b).collect() };
    let dx = sub(&dx, &g0[..rows * c]);
    let dw = sub(&dw, &g0[rows * c..rows * c + c]);
    let db_delta = sub(&db, &g0[rows * c + c..]);
    let case = format!("layernorm {rows}x{c} bias={with_bias}");
    if with_bias {
        let mut inputs = vec![x, w, bias];
        check(
            &case,
            &["x", "w", "b"],
            &mut inputs,
            &[dx, dw, db_delta],
            &mut rng,
            &|v| weighted_sum(&forward(&v[0], &v[1], Some(&v[2])).0, &r),
        )
    } else {
        assert!(
            db_delta.iter().all(|&d| d == 0.0),
            "{case}: db touched without a bias"
        );
        let mut inputs = vec![x, w];
        check(&case, &["x", "w"], &mut inputs, &[dx, dw], &mut rng, &|v| {
            weighted_sum(&forward(&v[0], &v[1], None).0, &r)
        })
    }
}

#[test]
fn layernorm() {
    layernorm_case(5, 7, true, 1);
    layernorm_case(5, 7, false, 2);
    // c > 64: the parameter gradients are split over column blocks.
    layernorm_case(3, 70, true, 3);
    layernorm_case(3, 70, false, 4);
}

fn matmul_case(
    rows: usize,
    c: usize,
    oc: usize,
    layout: Layout,
    with_bias: bool,
    seed: u64,
) -> f64 {
    let mut rng = Rng::new(seed);
    let x = randn(&mut rng, rows * c, 0.0, 1.0);
    let w = randn(&mut rng, c * oc, 0.0, 0.5);
    let bias = randn(&mut rng, oc, 0.0, 0.5);
    let r = randn(&mut rng, rows * oc, 0.0, 1.0);
    let forward = |x: &[f32], w: &[f32], b: Option<&[f32]>| {
        let mut y = vec![0.0; rows * oc];
        matmul_forward(Precision::F32, &mut y, x, w, layout, b, c, oc);
        y
    };
    // dinp is overwritten (garbage must vanish); dW and dbias accumulate.
    let mut dx = randn(&mut rng, rows * c, 0.0, 10.0);
    let gw = randn(&mut rng, c * oc, 0.0, 1.0);
    let gb = randn(&mut rng, oc, 0.0, 1.0);
    let (mut dw, mut db) = (gw.clone(), gb.clone());
    matmul_backward(
        Precision::F32,
        &mut dx,
        &mut dw,
        with_bias.then_some(&mut db[..]),
        &r,
        &x,
        &w,
        layout,
        c,
        oc,
    );
    let dw: Vec<f32> = dw.iter().zip(&gw).map(|(a, b)| a - b).collect();
    let db: Vec<f32> = db.iter().zip(&gb).map(|(a, b)| a - b).collect();
    let case = format!("matmul {rows}x{c}->{oc} {layout:?} bias={with_bias}");
    if with_bias {
        let mut inputs = vec![x, w, bias];
        check(
            &case,
            &["x", "w", "b"],
            &mut inputs,
            &[dx, dw, db],
            &mut rng,
            &|v| weighted_sum(&forward(&v[0], &v[1], Some(&v[2])), &r),
        )
    } else {
        assert!(
            db.iter().all(|&d| d == 0.0),
            "{case}: dbias touched without a bias"
        );
        let mut inputs = vec![x, w];
        check(&case, &["x", "w"], &mut inputs, &[dx, dw], &mut rng, &|v| {
            weighted_sum(&forward(&v[0], &v[1], None), &r)
        })
    }
}

#[test]
fn matmul() {
    matmul_case(5, 6, 7, Layout::InOut, true, 10);
    matmul_case(5, 6, 7, Layout::InOut, false, 11);
    matmul_case(5, 6, 7, Layout::OutIn, false, 12);
    matmul_case(5, 6, 7, Layout::OutIn, true, 13);
    // Fewer than 16 rows (generation-sized) and more than 16 or 64 output columns: matmul takes
    // its own column-split paths there, with whole and partial blocks of columns.
    matmul_case(5, 20, 40, Layout::InOut, true, 16);
    matmul_case(5, 20, 40, Layout::OutIn, false, 17);
    matmul_case(5, 6, 40, Layout::InOut, true, 18);
    matmul_case(3, 20, 150, Layout::InOut, true, 19);
    matmul_case(3, 20, 150, Layout::OutIn, true, 20);
    // Larger shapes take gemm's blocked and threaded paths; sampled.
    matmul_case(33, 20, 40, Layout::InOut, true, 14);
    matmul_case(33, 20, 40, Layout::OutIn, false, 15);
}

#[test]
fn gelu() {
    let mut rng = Rng::new(20);
    let n = 60;
    // Spread over [-6, 6], so both tails (tanh saturating) and the bend around 0 are covered.
    let x: Vec<f32> = (0..n)
        .map(|i| -6.0 + 12.0 * i as f32 / (n - 1) as f32 + 0.05 * rng.normal() as f32)
        .collect();
    let r = randn(&mut rng, n, 0.0, 1.0);
    let forward = |x: &[f32]| {
        let mut y = vec![0.0; x.len()];
        gelu_forward(&mut y, x);
        y
    };
    let mut dx = r.clone();
    gelu_backward_inplace(&mut dx, &x);
    check("gelu", &["x"], &mut [x], &[dx], &mut rng, &|v| {
        weighted_sum(&forward(&v[0]), &r)
    });
}

#[test]
fn encoder() {
    let mut rng = Rng::new(30);
    // c = 40 > 32: the backward pass splits columns into blocks. wpe has more rows than T, and
    // token 6 never appears: those rows must get zero gradient.
    let (b, t, c, vocab, max_t) = (2, 5, 40, 7, 6);
    let tokens: Vec<u32> = vec![3, 1, 3, 0, 5, 1, 1, 4, 2, 3];
    assert_eq!(tokens.len(), b * t);
    let wte = randn(&mut rng, vocab * c, 0.0, 1.0);
    let wpe = randn(&mut rng, max_t * c, 0.0, 1.0);
    let r = randn(&mut rng, b * t * c, 0.0, 1.0);
    let forward = |wte: &[f32], wpe: &[f32]| {
        let mut y = vec![0.0; b * t * c];
        encoder_forward(&mut y, &tokens, wte, Some(wpe), t, 0, c);
        y
    };
    // Both outputs accumulate.
    let (g_te, g_pe) = (
        randn(&mut rng, vocab * c, 0.0, 1.0),
        randn(&mut rng, max_t * c, 0.0, 1.0),
    );
    let (mut dwte, mut dwpe) = (g_te.clone(), g_pe.clone());
    encoder_backward(&mut dwte, Some(&mut dwpe), &r, &tokens, t, c);
    let dwte: Vec<f32> = dwte.iter().zip(&g_te).map(|(a, b)| a - b).collect();
    let dwpe: Vec<f32> = dwpe.iter().zip(&g_pe).map(|(a, b)| a - b).collect();
    assert!(
        dwte[6 * c..].iter().all(|&g| g == 0.0),
        "unused token row has a gradient"
    );
    assert!(
        dwpe[t * c..].iter().all(|&g| g == 0.0),
        "unused position row has a gradient"
    );
    let mut inputs = vec![wte, wpe];
    check(
        "encoder",
        &["wte", "wpe"],
        &mut inputs,
        &[dwte, dwpe],
        &mut rng,
        &|v| weighted_sum(&forward(&v[0], &v[1]), &r),
    );
}

#[test]
fn crossentropy() {
    let mut rng = Rng::new(40);
    let (rows, vocab, padded) = (6, 10, 16);
    // Padding columns hold garbage that must not matter; rows 1 and 4 carry no loss.
    let logits = randn(&mut rng, rows * padded, 0.0, 2.0);
    let targets: Vec<i32> = vec![3, -1, 0, 9, -1, 3];
    let valid = count_valid(&targets);
    let forward = |z: &[f32]| {
        let (mut loss, mut lse) = (vec![0.0; rows], vec![0.0; rows]);
        let mean = crossentropy_forward(&mut loss, &mut lse, z, &targets, vocab, padded);
        (mean, lse)
    };
    let (_, lse) = forward(&logits);
    let mut dz = logits.clone();
    crossentropy_backward_inplace(&mut dz, &lse, &targets, vocab, padded, 1.0 / valid as f32);
    for (row, (g, &tg)) in dz.chunks(padded).zip(&targets).enumerate() {
        assert!(
            g[vocab..].iter().all(|&x| x == 0.0),
            "row {row}: padded columns have a gradient"
        );
        if tg < 0 {
            assert!(
                g.iter().all(|&x| x == 0.0),
                "row {row}: ignored row has a gradient"
            );
        }
    }
    check(
        "crossentropy (padded, -1 targets)",
        &["logits"],
        &mut [logits],
        &[dz],
        &mut rng,
        &|v| forward(&v[0]).0 as f64,
    );
}

fn attention_case(
    batch: usize,
    n_head: usize,
    head_size: usize,
    t: usize,
    p: Option<f32>,
    seed: u64,
) -> f64 {
    gqa_attention_case(batch, n_head, n_head, head_size, t, p, seed)
}

/// Grouped-query attention: n_kv_head key/value heads shared by n_head query heads; the packed
/// qkv rows are (n_head + 2*n_kv_head)*head_size wide.
fn gqa_attention_case(
    batch: usize,
    n_head: usize,
    n_kv_head: usize,
    head_size: usize,
    t: usize,
    p: Option<f32>,
    seed: u64,
) -> f64 {
    let mut rng = Rng::new(seed);
    let dims = AttnDims {
        batch,
        n_head,
        head_size,
        n_kv_head,
        precision: Precision::F32,
    };
    let c = n_head * head_size;
    let w = (n_head + 2 * n_kv_head) * head_size;
    let dropout = p.map(|p| AttnDropout {
        key: 0x5eed ^ seed,
        p,
        max_t: t,
    });
    let qkv = randn(&mut rng, batch * t * w, 0.0, 1.0);
    let r = randn(&mut rng, batch * t * c, 0.0, 1.0);
    let forward = |qkv: &[f32]| {
        let (mut out, mut lse) = (vec![0.0; batch * t * c], vec![0.0; batch * n_head * t]);
        attention_forward(&mut out, &mut lse, qkv, dims, t, dropout);
        (out, lse)
    };
    let (out, lse) = forward(&qkv);
    // dqkv is overwritten: start from garbage.
    let mut dqkv = randn(&mut rng, qkv.len(), 0.0, 10.0);
    attention_backward(&mut dqkv, &r, &qkv, &out, &lse, dims, t, dropout);
    let case = if n_kv_head == n_head {
        format!("attention B{batch} H{n_head} hs{head_size} T{t} p={p:?}")
    } else {
        format!("gqa B{batch} H{n_head}/{n_kv_head} hs{head_size} T{t} p={p:?}")
    };
    check(&case, &["qkv"], &mut [qkv], &[dqkv], &mut rng, &|v| {
        weighted_sum(&forward(&v[0]).0, &r)
    })
}

#[test]
fn attention() {
    attention_case(2, 2, 4, 5, None, 50);
    attention_case(2, 2, 4, 5, Some(0.3), 51);
    // T > 64: queries are processed in two row blocks.
    attention_case(1, 2, 4, 70, None, 52);
    attention_case(1, 2, 4, 70, Some(0.3), 53);
}

#[test]
fn gqa_attention() {
    // Two and four query heads per kv head; T = 70 crosses a 64-row block.
    gqa_attention_case(2, 4, 2, 4, 5, None, 54);
    gqa_attention_case(2, 4, 1, 4, 5, None, 55);
    gqa_attention_case(1, 4, 2, 4, 70, None, 56);
    gqa_attention_case(1, 4, 1, 4, 70, None, 57);
    gqa_attention_case(2, 4, 2, 4, 5, Some(0.3), 58);
}

fn rmsnorm_case(rows: usize, c: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let eps = 1e-5;
    let x = randn(&mut rng, rows * c, 0.5, 1.0);
    let w = randn(&mut rng, c, 1.0, 0.3);
    let r = randn(&mut rng, rows * c, 0.0, 1.0);
    let forward = |x: &[f32], w: &[f32]| {
        let (mut y, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows]);
        rmsnorm_forward(&mut y, &mut rstd, x, w, c, eps);
        (y, rstd)
    };
    let (_, rstd) = forward(&x, &w);
    // Both outputs accumulate (+=): start from garbage and subtract it afterwards.
    let g0 = randn(&mut rng, rows * c + c, 0.0, 1.0);
    let (mut dx, mut dw) = (g0[..rows * c].to_vec(), g0[rows * c..].to_vec());
    rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, c);
    let sub = |d: &[f32], g: &[f32]| -> Vec<f32> { d.iter().zip(g).map(|(a, b)| a - b).collect() };
    let dx = sub(&dx, &g0[..rows * c]);
    let dw = sub(&dw, &g0[rows * c..]);
    let mut inputs = vec![x, w];
    check(
        &format!("rmsnorm {rows}x{c}"),
        &["x", "w"],
        &mut inputs,
        &[dx, dw],
        &mut rng,
        &|v| weighted_sum(&forward(&v[0], &v[1]).0, &r),
    )
}

#[test]
fn rmsnorm() {
    rmsnorm_case(5, 7, 100);
    // c > 64: the weight gradient is split over column blocks.
    rmsnorm_case(3, 70, 101);
}

/// RoPE on rows laid out like a packed Llama qkv row: `n_rot` heads rotated (q and k), then
/// `n_rest` heads (v) that must be left alone; rows at positions pos0...
fn rope_case(rows: usize, hs: usize, n_rot: usize, n_rest: usize, pos0: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let stride = (n_rot + n_rest) * hs;
    let table = RopeTable::new(hs, pos0 + rows + 2, 10000.0);
    let x = randn(&mut rng, rows * stride, 0.0, 1.0);
    let r = randn(&mut rng, rows * stride, 0.0, 1.0);
    let forward = |x: &[f32]| {
        let mut y = x.to_vec();
        rope_forward(&mut y, stride, rows, n_rot, pos0, &table);
        y
    };
    // The rotation is orthogonal: backward(forward(x)) is x again.
    let mut round_trip = forward(&x);
    rope_backward(&mut round_trip, stride, rows, n_rot, pos0, &table);
    let dev = x
        .iter()
        .zip(&round_trip)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        dev <= 1e-6,
        "rope: backward(forward(x)) is off x by {dev:.2e}"
    );
    let mut dx = r.clone();
    rope_backward(&mut dx, stride, rows, n_rot, pos0, &table);
    check(
        &format!("rope {rows}x{n_rot}+{n_rest}x{hs} pos0={pos0}"),
        &["x"],
        &mut [x],
        &[dx],
        &mut rng,
        &|v| weighted_sum(&forward(&v[0]), &r),
    )
}

#[test]
fn rope() {
    rope_case(5, 8, 3, 1, 0, 110);
    rope_case(4, 6, 2, 1, 9, 111);
    // More rows than one task's share: the parallel path.
    rope_case(300, 8, 3, 1, 5, 112);
}

#[test]
fn swiglu() {
    let mut rng = Rng::new(120);
    let (rows, hd) = (4, 9);
    // Gates spread over [-6, 6] (both tails of the sigmoid and the bend around 0), ups O(1).
    let gu: Vec<f32> = (0..rows * 2 * hd)
        .map(|i| {
            if i % (2 * hd) < hd {
                -6.0 + 12.0 * rng.below(1000) as f32 / 999.0
            } else {
                rng.normal() as f32
            }
        })
        .collect();
    let r = randn(&mut rng, rows * hd, 0.0, 1.0);
    let forward = |gu: &[f32]| {
        let mut y = vec![0.0; rows * hd];
        swiglu_forward(&mut y, gu, hd);
        y
    };
    // dgu is overwritten: start from garbage.
    let mut dgu = randn(&mut rng, rows * 2 * hd, 0.0, 10.0);
    swiglu_backward(&mut dgu, &r, &gu, hd);
    check("swiglu", &["gu"], &mut [gu], &[dgu], &mut rng, &|v| {
        weighted_sum(&forward(&v[0]), &r)
    });
}

#[test]
fn dropout() {
    let mut rng = Rng::new(60);
    // Longer than one 4096-element chunk, so the mask index crosses a chunk boundary.
    let (n, key, p) = (4100, 0xd00d, 0.3f32);
    let x = randn(&mut rng, n, 0.0, 1.0);
    let r = randn(&mut rng, n, 0.0, 1.0);
    let forward = |x: &[f32]| {
        let mut y = x.to_vec();
        dropout_inplace(&mut y, key, p);
        y
    };
    let mut dx = r.clone();
    dropout_inplace(&mut dx, key, p);
    let kept = dx.iter().filter(|&&g| g != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.05, "kept fraction {kept}");
    check(
        "dropout p=0.3",
        &["x"],
        &mut [x.clone()],
        &[dx],
        &mut rng,
        &|v| weighted_sum(&forward(&v[0]), &r),
    );
    // p = 0 is the identity.
    let mut y = x.clone();
    dropout_inplace(&mut y, key, 0.0);
    assert_eq!(y, x);
}

#[test]
fn residual() {
    let mut rng = Rng::new(70);
    let n = 4100;
    let a = randn(&mut rng, n, 0.0, 1.0);
    let b = randn(&mut rng, n, 0.0, 1.0);
    let r = randn(&mut rng, n, 0.0, 1.0);
    // The backward pass is the identity on both inputs.
    let mut inputs = vec![a, b];
    check(
        "residual",
        &["a", "b"],
        &mut inputs,
        &[r.clone(), r.clone()],
        &mut rng,
        &|v| {
            let mut y = vec![0.0; n];
            residual_forward(&mut y, &v[0], &v[1]);
            weighted_sum(&y, &r)
        },
    );
}

/// The check must be able to fail: wrong gradients of several kinds are rejected.
#[test]
fn negative_controls() {
    let mut rng = Rng::new(80);
    let (rows, c, oc) = (5, 6, 7);
    let x = randn(&mut rng, rows * c, 0.0, 1.0);
    let w = randn(&mut rng, c * oc, 0.0, 0.5);
    let r = randn(&mut rng, rows * oc, 0.0, 1.0);
    let f = |v: &[Vec<f32>]| {
        let mut y = vec![0.0; rows * oc];
        matmul_forward(
            Precision::F32,
            &mut y,
            &v[0],
            &v[1],
            Layout::InOut,
            None,
            c,
            oc,
        );
        weighted_sum(&y, &r)
    };
    let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c * oc]);
    matmul_backward(
        Precision::F32,
        &mut dx,
        &mut dw,
        None,
        &r,
        &x,
        &w,
        Layout::InOut,
        c,
        oc,
    );
    let mut inputs = vec![x, w];
    let idx: Vec<usize> = (0..c * oc).collect();
    let fd: Vec<f64> = idx
        .iter()
        .map(|&i| central_diff(&mut inputs, 1, i, KERNEL_H, &f))
        .collect();
    let an: Vec<f64> = dw.iter().map(|&g| g as f64).collect();
    let scale = max_abs(&dw).max(FLOOR);
    let within = |an: &[f64]| compare(&fd, an, scale, KERNEL_TOL).err <= KERNEL_TOL;
    assert!(within(&an), "the correct gradient must pass");
    let scaled: Vec<f64> = an.iter().map(|g| 1.1 * g).collect();
    assert!(!within(&scaled), "gradient x1.1 must fail");
    let mut one_off = an.clone();
    one_off[17] += 0.02 * scale;
    assert!(
        !within(&one_off),
        "one element off by 2% of the scale must fail"
    );
    let mut swapped = an.clone();
    let (i, j) = (0..an.len())
        .flat_map(|i| (0..an.len()).map(move |j| (i, j)))
        .max_by(|a, b| {
            (an[a.0] - an[a.1])
                .abs()
                .total_cmp(&(an[b.0] - an[b.1]).abs())
        })
        .unwrap();
    swapped.swap(i, j);
    assert!(!within(&swapped), "two elements swapped must fail");
    // Forgetting the mean-of-(g*n) term of the LayerNorm backward must fail too.
    let (lc, lrows) = (7, 5);
    let lx = randn(&mut rng, lrows * lc, 0.5, 1.0);
    let lw = randn(&mut rng, lc, 1.0, 0.3);
    let lr = randn(&mut rng, lrows * lc, 0.0, 1.0);
    let lf = |v: &[Vec<f32>]| {
        let (mut y, mut m, mut s) = (vec![0.0; lrows * lc], vec![0.0; lrows], vec![0.0; lrows]);
        layernorm_forward(&mut y, &mut m, &mut s, &v[0], &lw, None, lc);
        weighted_sum(&y, &lr)
    };
    let (mut y, mut m, mut s) = (vec![0.0; lrows * lc], vec![0.0; lrows], vec![0.0; lrows]);
    layernorm_forward(&mut y, &mut m, &mut s, &lx, &lw, None, lc);
    let mut wrong = vec![0.0f64; lrows * lc];
    for row in 0..lrows {
        let g: Vec<f64> = (0..lc).map(|i| (lr[row * lc + i] * lw[i]) as f64).collect();
        let g_mean = g.iter().sum::<f64>() / lc as f64;
        for i in 0..lc {
            wrong[row * lc + i] = s[row] as f64 * (g[i] - g_mean);
        }
    }
    let mut linputs = vec![lx];
    let lfd: Vec<f64> = (0..lrows * lc)
        .map(|i| central_diff(&mut linputs, 0, i, KERNEL_H, &lf))
        .collect();
    let lscale = wrong.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    assert!(
        compare(&lfd, &wrong, lscale, KERNEL_TOL).err > KERNEL_TOL,
        "a LayerNorm backward without the n*mean(g*n) term must fail"
    );
    // So must an RMSNorm backward without its x*rstd^2*mean(g*x) term.
    let rf = |v: &[Vec<f32>]| {
        let (mut y, mut s) = (vec![0.0; lrows * lc], vec![0.0; lrows]);
        rmsnorm_forward(&mut y, &mut s, &v[0], &lw, lc, 1e-5);
        weighted_sum(&y, &lr)
    };
    let (mut y, mut s) = (vec![0.0; lrows * lc], vec![0.0; lrows]);
    rmsnorm_forward(&mut y, &mut s, &linputs[0], &lw, lc, 1e-5);
    let wrong: Vec<f64> = (0..lrows * lc)
        .map(|i| s[i / lc] as f64 * (lr[i] * lw[i % lc]) as f64)
        .collect();
    let rfd: Vec<f64> = (0..lrows * lc)
        .map(|i| central_diff(&mut linputs, 0, i, KERNEL_H, &rf))
        .collect();
    let rscale = wrong.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    assert!(
        compare(&rfd, &wrong, rscale, KERNEL_TOL).err > KERNEL_TOL,
        "an RMSNorm backward without the x*rstd^2*mean(g*x) term must fail"
    );
}

// ---------------------------------------------------------------------------------------------
// The whole model
// ---------------------------------------------------------------------------------------------

/// Mean cross-entropy over rows whose target is not -1, in f64, over the first `vocab` columns.
fn crossentropy_f64(logits: &[f32], targets: &[i32], vocab: usize, padded: usize) -> f64 {
    let (mut total, mut n) = (0.0f64, 0usize);
    for (z, &tg) in logits.chunks(padded).zip(targets) {
        if tg < 0 {
            continue;
        }
        let z = &z[..vocab];
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        total += lse - z[tg as usize] as f64;
        n += 1;
    }
    total / n as f64
}

fn model_case(bias: bool, dropout: f32) -> f64 {
    let cfg = GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        block_size: 8,
        vocab_size: 11,
        pad_vocab: true,
        bias,
        dropout,
        arch: Default::default(),
    };
    let (c, v, vp) = (cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size());
    let mut model = CpuEngine::new(Gpt::new(cfg, 1000 + bias as u64).unwrap());
    let mut rng = Rng::new(90 + bias as u64 * 2 + (dropout > 0.0) as u64);
    // nanoGPT's init (weights of std 0.02, zero biases, unit LayerNorm weights) leaves the loss
    // nearly flat at log(V) and would hide a backward pass that mixes up biases or LayerNorm
    // weights: draw every parameter generically instead, padding rows of wte included (garbage
    // there must not reach the loss).
    for e in model.model.table.entries.clone() {
        let (mean, std) = if e.name.contains("ln_") && e.name.ends_with(".weight") {
            (1.0, 0.2)
        } else if e.name.ends_with(".bias") {
            (0.0, 0.1)
        } else {
            (0.0, WEIGHT_STD)
        };
        for x in &mut model.model.params[e.range()] {
            *x = (mean + std * rng.normal()) as f32;
        }
    }
    // T = 7 < block_size, so the last row of wpe is unused. Tokens repeat; two targets are -1.
    let (b, t) = (2, 7);
    let tokens: Vec<u32> = vec![1, 5, 1, 7, 10, 0, 5, 3, 3, 8, 2, 1, 9, 3];
    let targets: Vec<i32> = vec![5, 1, -1, 10, 0, 5, 2, 3, 8, 2, 1, -1, 3, 4];
    let mode = Mode::Train { seed: 7 };
    // The scalar is the model's loss, recomputed in f64 from its f32 logits: the f32 loss it
    // returns has a granularity of ~2.4e-7, i.e. ~1e-4 in a finite difference, larger than many
    // gradients here. The two are asserted to agree.
    let loss = |model: &mut CpuEngine| -> f64 {
        let returned = model
            .forward(&tokens, Some(&targets), b, t, mode)
            .unwrap()
            .unwrap();
        let ours = crossentropy_f64(model.logits(), &targets, v, vp);
        assert!(
            (ours - returned as f64).abs() <= 1e-6 * ours.abs(),
            "returned loss {returned} vs {ours} recomputed in f64"
        );
        ours
    };
    let loss0 = loss(&mut model);
    model.zero_grad();
    model.backward(1.0).unwrap();
    let grads = model.grads.clone();
    assert_eq!(
        loss(&mut model),
        loss0,
        "the forward pass is not deterministic"
    );

    let wte = model.model.table.get("wte.weight").unwrap().clone();
    let live = v * c;
    assert!(
        grads[wte.offset + live..wte.offset + wte.len()]
            .iter()
            .all(|&g| g == 0.0),
        "padding rows of wte have a gradient"
    );
    let wpe = model.model.table.get("wpe.weight").unwrap().clone();
    assert!(
        grads[wpe.offset + t * c..wpe.offset + wpe.len()]
            .iter()
            .all(|&g| g == 0.0),
        "unused rows of wpe have a gradient"
    );

    let case = format!("model bias={bias} dropout={dropout}");
    let (mut worst, mut controls, mut n_checked) = (0.0f64, 0, 0);
    let mut worst_name = String::new();
    for e in model.model.table.entries.clone() {
        let g = &grads[e.range()];
        let n_live = if e.name == "wte.weight" {
            live
        } else {
            e.len()
        };
        // The element with the largest gradient and one random one of the live part (two for
        // matrices); plus two padding elements of wte (their finite differences must be zero).
        let argmax = (0..n_live)
            .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
            .unwrap();
        let mut idx = vec![argmax, rng.below(n_live as u64) as usize];
        if e.shape.len() == 2 {
            idx.push(rng.below(n_live as u64) as usize);
        }
        if e.name == "wte.weight" {
            idx.push(live + rng.below((e.len() - live) as u64) as usize);
            idx.push(e.len() - 1);
        }
        let mut fd = Vec::new();
        for &i in &idx {
            let at = e.offset + i;
            let x = model.model.params[at];
            let (xp, xm) = (x + MODEL_H, x - MODEL_H);
            model.model.params[at] = xp;
            let lp = loss(&mut model);
            model.model.params[at] = xm;
            let lm = loss(&mut model);
            model.model.params[at] = x;
            fd.push((lp - lm) / (xp as f64 - xm as f64));
        }
        let an: Vec<f64> = idx.iter().map(|&i| g[i] as f64).collect();
        let scale = max_abs(&g[..n_live]).max(FLOOR);
        let cmp = compare(&fd, &an, scale, MODEL_TOL);
        controls += assert_cmp(&format!("{case} d/d{}", e.name), &cmp, MODEL_TOL) as usize;
        if cmp.err > worst {
            (worst, worst_name) = (cmp.err, e.name.clone());
        }
        n_checked += idx.len();
    }
    assert_eq!(loss(&mut model), loss0, "parameters not restored");
    assert!(controls > 0, "{case}: no negative control could run");
    println!(
        "{case:<34} worst {worst:.2e} ({worst_name}; {n_checked} params checked, {controls} controls)"
    );

    // backward(s) scales the gradient by s (exactly, for a power of two), and a second backward
    // pass accumulates into grads (to rounding: some tensors sum several kernels' contributions).
    loss(&mut model);
    model.zero_grad();
    model.backward(0.5).unwrap();
    let halves: Vec<f32> = model.grads.iter().map(|&g| 2.0 * g).collect();
    assert!(
        halves == grads,
        "{case}: backward(0.5) is not half of backward(1.0)"
    );
    loss(&mut model);
    model.backward(0.5).unwrap();
    let scale = max_abs(&grads);
    let dev = model
        .grads
        .iter()
        .zip(&grads)
        .fold(0.0f64, |m, (&a, &b)| m.max((a - b).abs() as f64));
    assert!(
        dev <= 1e-6 * scale,
        "{case}: two backward(0.5) passes do not add up to backward(1.0): {dev:.2e}"
    );
    worst
}

#[test]
fn model() {
    model_case(true, 0.0);
    model_case(false, 0.0);
    model_case(true, 0.2);
    model_case(false, 0.2);
}
