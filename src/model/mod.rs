//! The GPT on the host: parameter table, initialisation and weight I/O. The math that runs it
//! lives in the backends (`crate::engine`).

pub mod gpt;
pub mod params;
pub mod pretrained;
pub mod weights;

pub use gpt::Gpt;
pub use params::ParamTable;
