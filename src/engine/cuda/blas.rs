//! Matrix products on cuBLASLt, through its `result`-level API: the safe `Matmul` wrapper
//! silently allows TF32 for f32, rebuilds its descriptors on every call and has no bias-only
//! epilogue. Here each shape gets its descriptors and algorithm once, cached, and the compute
//! type is plain f32 (TF32 off) unless TF32 is asked for. A bf16 or f16 product (`Gemm::inputs`)
//! reads A and B in that type and sums in f32 into an f32 D (with an f32 bias): cuBLASLt's
//! BF16 x BF16 -> FP32 and FP16 x FP16 -> FP32 cases, on the tensor cores; or, bf16 only, into
//! a bf16 D (`Gemm::out_bf16`) with a bf16 bias (its type unset: cuBLASLt's default for
//! `CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE` is D's type), each f32 sum plus bias rounded once.
//! GELU's forward and backward can ride on a product too ([`Epilogue`]), with an auxiliary
//! buffer of D's type and shape holding GELU's input (the AUX type and leading dimension are
//! likewise D's).
//!
//! cuBLASLt is column-major: D (m x n, ldd) = op(A) op(B) [+ D] [+ bias per row of D]. A
//! row-major (r x c) buffer is a column-major (c x r) one, which is how the engine maps the
//! model's row-major products onto it (see `engine::cuda::matmul`).

use super::memory::DevBuf;
use anyhow::{anyhow, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtEpilogue_t, cublasLtHandle_t, cublasLtMatmulAlgo_t,
    cublasLtMatmulDescAttributes_t as Desc, cublasLtMatmulDesc_t,
    cublasLtMatmulPreferenceAttributes_t as Pref, cublasLtMatrixLayout_t, cudaDataType,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

/// cuBLASLt's scratch space: 32 MiB, what NVIDIA recommends for Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// One product's shape in cuBLASLt's terms. `ta`/`tb` transpose A/B; `accumulate` adds to D
/// (beta = 1); `epilogue`: what happens to each sum before it is written; `inputs`: what A and
/// B hold (D, C, the bias and the auxiliary buffer are f32 unless `out_bf16`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldd: usize,
    pub accumulate: bool,
    pub epilogue: Epilogue,
    pub inputs: Precision,
    /// D, C and the bias hold bf16, each f32 sum (with its bias) rounded once (bf16 inputs).
    pub out_bf16: bool,
}

/// What cuBLASLt does with each sum s of the product (and D's old value) before writing it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum Epilogue {
    /// D = s.
    None,
    /// D = s + bias, a vector of m entries added to every column.
    Bias,
    /// aux = s [+ bias], D = GELU(aux) (tanh form): c_fc's product and the GELU after it.
    GeluAux { bias: bool },
    /// D = s * GELU'(aux): the gradient of GELU's input, aux being that input.
    DGelu,
}

impl Epilogue {
    pub fn has_bias(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::GeluAux { bias: true })
    }

    pub fn has_aux(self) -> bool {
        matches!(self, Epilogue::GeluAux { .. } | Epilogue::DGelu)
    }

    fn cublaslt(self) -> cublasLtEpilogue_t {
        match self {
            Epilogue::None => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluAux { bias: false } => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX,
            Epilogue::GeluAux { bias: true } => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Epilogue::DGelu => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DGELU,
        }
    }
}

/// The vectors and buffers an epilogue reads or writes besides D (device addresses), each
/// given exactly when the epilogue has it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Extra {
    pub bias: Option<u64>,
    pub aux: Option<u64>,
}

/// What training's matrix products multiply in (`dtype`): f32, or inputs in bf16 or f16 on the
/// tensor cores; the sums are f32 in every case.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub(super) enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

struct Plan {
    desc: cublasLtMatmulDesc_t,
    a: cublasLtMatrixLayout_t,
    b: cublasLtMatrixLayout_t,
    d: cublasLtMatrixLayout_t,
    algo: cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in Plan::new and destroyed once, here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

pub(super) struct Blas {
    handle: cublasLtHandle_t,
    workspace: DevBuf<u8>,
    tf32: bool,
    /// Keyed by shape and the alignment (bytes, at most 16) its pointers share: an algorithm
    /// chosen for aligned pointers may refuse misaligned ones. `Err`: cuBLASLt offered none.
    plans: RefCell<HashMap<(Gemm, u32), Result<Plan, String>>>,
}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: created in Blas::new, destroyed once after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> anyhow::Error + '_ {
    move |e| anyhow!("cuBLASLt {what} failed: {e}")
}

impl Blas {
    /// `tf32` lets the tensor cores round f32 inputs to TF32 (faster, ~1e-3 relative error).
    pub fn new(tf32: bool) -> Result<Blas> {
        let handle = lt::create_handle().map_err(lt_err("initialisation"))?;
        let workspace = DevBuf::zeros(WORKSPACE_BYTES)
            .map_err(|e| anyhow!("could not allocate cuBLASLt's workspace: {e:?}"))?;
        Ok(Blas {
            handle,
            workspace,
            tf32,
            plans: RefCell::new(HashMap::new()),
        })
    }

    /// The descriptors and algorithm for `g`; `aux`: the auxiliary buffer's address, whose
    /// alignment the heuristic reads.
    fn plan(&self, g: Gemm, align: u32, aux: Option<u64>) -> Result<Plan> {
        // TF32 concerns f32 inputs only: 16-bit inputs go to the tensor cores as they are.
        let compute = if self.tf32 && g.inputs == Precision::F32 {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let f32_t = cudaDataType::CUDA_R_32F;
        let input_t = match g.inputs {
            Precision::F32 => f32_t,
            Precision::Bf16 => cudaDataType::CUDA_R_16BF,
            Precision::F16 => cudaDataType::CUDA_R_16F,
        };
        let desc = lt::create_matmul_desc(compute, f32_t).map_err(lt_err("descriptor"))?;
        // Stored shapes: A is (m x k), or (k x m) when transposed; B likewise with n.
        let (ar, ac) = if g.ta { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.tb { (g.n, g.k) } else { (g.k, g.n) };
        let layout = |t: cudaDataType, r: usize, c: usize, ld: usize| {
            lt::create_matrix_layout(t, r as u64, c as u64, ld as i64).map_err(lt_err("layout"))
        };
        let mut plan = Plan {
            desc,
            a: layout(input_t, ar, ac, g.lda)?,
            b: layout(input_t, br, bc, g.ldb)?,
            d: layout(
                if g.out_bf16 {
                    cudaDataType::CUDA_R_16BF
                } else {
                    f32_t
                },
                g.m,
                g.n,
                g.ldd,
            )?,
            algo: cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // cublasOperation_t as int32: 0 = N, 1 = T.
        let (ta, tb) = (i32::from(g.ta), i32::from(g.tb));
        let epilogue = g.epilogue.cublaslt();
        // SAFETY: each attribute gets a value of the type cuBLASLt documents for it.
        unsafe {
            let set = |attr: Desc, ptr: *const c_void, size: usize| {
                lt::set_matmul_desc_attribute(plan.desc, attr, ptr, size)
                    .map_err(lt_err("attribute"))
            };
            set(Desc::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as _, 4)?;
            set(Desc::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as _, 4)?;
            set(
                Desc::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const cublasLtEpilogue_t as _,
                size_of::<cublasLtEpilogue_t>(),
            )?;
            if let Some(aux) = aux {
                let ld = g.ldd as i64;
                set(
                    Desc::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                    &ld as *const i64 as _,
                    8,
                )?;
                set(
                    Desc::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    &aux as *const u64 as _,
                    8,
                )?;
            }
            let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
            let ws = WORKSPACE_BYTES as u64;
            let set_pref = |attr: Pref, ptr: *const c_void, size: usize| {
                lt::set_matmul_pref_attribute(pref, attr, ptr, size)
            };
            let found = set_pref(
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as _,
                8,
            )
            .and_then(|_| {
                for attr in [
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ] {
                    set_pref(attr, &align as *const u32 as _, 4)?;
                }
                Ok(())
            })
            .and_then(|_| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.d,
                    plan.d,
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            plan.algo = found
                .map_err(|e| anyhow!("cuBLASLt has no algorithm for {g:?}: {e}"))?
                .algo;
        }
        Ok(plan)
    }

    /// Whether cuBLASLt has an algorithm for `g` with these pointers (the answer is kept for
    /// `matmul`): for products with a fallback, such as a GELU epilogue.
    pub fn has_algorithm(&self, g: Gemm, a: u64, b: u64, d: u64, extra: Extra) -> bool {
        let align = Self::alignment(a, b, d, extra);
        self.cached_plan(&mut self.plans.borrow_mut(), g, align, extra.aux)
            .is_ok()
    }

    /// The plan for `g` at `align`, made on first use and kept, a refusal too (for a GELU
    /// epilogue, whose callers fall back to the kernels, said once on stderr).
    fn cached_plan<'a>(
        &self,
        plans: &'a mut HashMap<(Gemm, u32), Result<Plan, String>>,
        g: Gemm,
        align: u32,
        aux: Option<u64>,
    ) -> &'a Result<Plan, String> {
        plans.entry((g, align)).or_insert_with(|| {
            let plan = self.plan(g, align, aux).map_err(|e| e.to_string());
            if let (Err(e), true) = (&plan, g.epilogue.has_aux()) {
                eprintln!("{e}; running it without the {:?} epilogue", g.epilogue);
            }
            plan
        })
    }

    /// The alignment (bytes, at most 16) every pointer of a product shares.
    fn alignment(a: u64, b: u64, d: u64, extra: Extra) -> u32 {
        [a, b, d, extra.bias.unwrap_or(d), extra.aux.unwrap_or(d)]
            .iter()
            .map(|p| 1u32 << p.trailing_zeros().min(4))
            .min()
            .unwrap_or(16)
    }

    /// D = epilogue(op(A) op(B) [+ D]), queued on the default stream. Addresses are device
    /// pointers into the engine's buffers; `extra` holds what the epilogue reads or writes.
    pub fn matmul(&self, g: Gemm, a: u64, b: u64, d: u64, extra: Extra) -> Result<()> {
        assert_eq!(
            (g.epilogue.has_bias(), g.epilogue.has_aux()),
            (extra.bias.is_some(), extra.aux.is_some()),
            "the epilogue's pointers do not match it"
        );
        let align = Self::alignment(a, b, d, extra);
        let mut plans = self.plans.borrow_mut();
        let plan = self
            .cached_plan(&mut plans, g, align, extra.aux)
            .as_ref()
            .map_err(|e| anyhow!("{e}"))?;
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: the caller's addresses cover the shapes of `g`; the plan was made for `g`.
        unsafe {
            for (attr, ptr) in [
                (Desc::CUBLASLT_MATMUL_DESC_BIAS_POINTER, extra.bias),
                (Desc::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, extra.aux),
            ] {
                if let Some(ptr) = ptr {
                    lt::set_matmul_desc_attribute(plan.desc, attr, &ptr as *const u64 as _, 8)
                        .map_err(lt_err("epilogue pointer"))?;
                }
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as _,
                &beta as *const f32 as _,
                a as *const c_void,
                plan.a,
                b as *const c_void,
                plan.b,
                d as *const c_void,
                plan.d,
                d as *mut c_void,
                plan.d,
                &plan.algo,
                self.workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
                std::ptr::null_mut(),
            )
            .map_err(lt_err("matmul"))
        }
    }
}
