//! The GPT as it lives on the host: its shape, the table of named parameter views, and one flat
//! buffer holding every parameter. What loads and saves models works on this; a backend
//! (`crate::engine`) takes it over to train or run it.

use super::params::ParamTable;
use crate::config::GptConfig;
use anyhow::Result;

#[derive(Clone, Debug)]
pub struct Gpt {
    pub config: GptConfig,
    pub table: ParamTable,
    pub params: Vec<f32>,
}

impl Gpt {
    /// A freshly initialised model (nanoGPT's init, seeded).
    pub fn new(config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let table = ParamTable::new(&config);
        let params = table.init(&config, seed);
        Ok(Gpt::from_parts(config, table, params))
    }

    pub(crate) fn from_parts(config: GptConfig, table: ParamTable, params: Vec<f32>) -> Gpt {
        Gpt {
            config,
            table,
            params,
        }
    }
}
