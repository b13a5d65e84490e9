//! Helpers shared by the integration tests: fixture paths and safetensors readers.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// `../shared/fixtures`, beside the checkout.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

pub fn read_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn read_i32(st: &SafeTensors, name: &str) -> Vec<i32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// max |a-b| / (max |b| over the tensor): relative error at the tensor's scale, robust to entries
/// near zero.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0.0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}
