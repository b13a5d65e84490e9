//! CPU kernels, one op per file, forward and backward side by side. Buffers in, buffers out:
//! a GPU backend can implement the same set without touching the model code.

pub mod adamw;
pub mod attention;
pub mod crossentropy;
pub mod dropout;
pub mod encoder;
pub mod gelu;
pub mod layernorm;
pub mod math;
pub mod matmul;
pub mod matmul_bf16;
pub mod q8;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
