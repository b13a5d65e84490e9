//! Settings: the knob tables ([`knobs`]), the model's configuration and shape ([`model`]), and
//! the training knobs ([`train`]).

pub mod knobs;
pub mod model;
pub mod train;

pub use model::{Arch, GptConfig, LlamaArch, ModelFamily};
pub use train::TrainConfig;
