pub mod cpu;
pub mod cuda;
