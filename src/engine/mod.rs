//! The engine seam: what training, sampling, `bench` and `eval` ask of a backend.
//!
//! A backend owns the model's parameters, gradients, optimizer moments and activations on its
//! device, and runs the GPT's forward and backward passes, the optimizer step and cached
//! inference there. Everything above this module talks to a backend through [`Engine`] only.

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// Where the model runs: `--device=cpu|cuda|auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA when a usable GPU is present, else the CPU.
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            _ if s.starts_with("cuda:") => {
                bail!("device '{s}': pick a GPU with CUDA_VISIBLE_DEVICES and pass --device=cuda")
            }
            _ => bail!("device '{s}' is not cpu, cuda or auto"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        })
    }
}
