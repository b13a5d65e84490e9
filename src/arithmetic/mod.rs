//! A GPT that does arithmetic: problem generation and formats, dataset preparation, evaluation.

pub mod dataset;
pub mod problems;

pub use dataset::{prepare_arithmetic, ArithmeticOptions};
pub use problems::{Format, Op, Problem};
pub mod eval;
pub mod quickstart;
