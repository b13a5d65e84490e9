//! The GPT as it lives on the host: its shape, the table of named parameter views, and one flat
//! buffer holding every parameter. What loads and saves models works on this; a backend
//! (`crate::engine`) takes it over to train or run it.

use super::params::ParamTable;
use crate::config::GptConfig;
use crate::llama::{Llama, LlamaTable};
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

    /// A Llama read from any of its files, as the engines take it. The parameters keep their
    /// order: [`ParamTable`] lays a Llama out as the loaders do.
    pub fn from_llama(model: Llama) -> Gpt {
        let config = GptConfig::from_llama(&model.config);
        let table = ParamTable::new(&config);
        Gpt::from_parts(config, table, model.params)
    }

    /// The model in the Llama loaders' and writers' form, or `None` for a GPT-2.
    pub fn to_llama(&self) -> Option<Llama> {
        let config = self.config.llama_config()?;
        let table = LlamaTable::new(&config).ok()?;
        Some(Llama {
            config,
            table,
            params: self.params.clone(),
        })
    }

    pub(crate) fn from_parts(config: GptConfig, table: ParamTable, params: Vec<f32>) -> Gpt {
        Gpt {
            config,
            table,
            params,
        }
    }
}
