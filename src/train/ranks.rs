//! This process's part in a data-parallel run (see [`crate::dist`]): alone, or rank r of W.
//! nanoGPT's DDP semantics: `batch_size` is per rank, the iteration's
//! `gradient_accumulation_steps` are shared out between the ranks, and rank 0 alone logs,
//! evaluates, writes `metrics.jsonl` and saves checkpoints.

use super::config::TrainConfig;
use crate::dist::{check_same_on_every_rank, ring::Ring, Collective, World};
use crate::engine::Engine;
use anyhow::{bail, Result};
use std::ops::Range;

pub struct Ranks {
    ring: Option<Ring>,
}

impl Ranks {
    /// Joins the run the environment describes (a launcher's variables), or trains alone.
    pub fn join(cfg: &TrainConfig) -> Result<Ranks> {
        let Some(world) = World::from_env()? else {
            return Ok(Ranks { ring: None });
        };
        if !cfg.gradient_accumulation_steps.is_multiple_of(world.size) {
            bail!(
                "gradient_accumulation_steps ({}) must be a multiple of the number of ranks ({}): each rank runs an equal share of every iteration's micro-batches",
                cfg.gradient_accumulation_steps,
                world.size
            );
        }
        Ok(Ranks {
            ring: Some(Ring::connect(world, serde_json::to_value(cfg)?)?),
        })
    }

    pub fn rank(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.world().rank)
    }

    pub fn size(&self) -> usize {
        self.ring.as_ref().map_or(1, |r| r.world().size)
    }

    /// Rank 0, or a process training alone: the one that logs, evaluates and saves.
    pub fn leader(&self) -> bool {
        self.rank() == 0
    }

    /// The iteration's micro-steps (of `all` in one process) this rank runs: rank r takes the
    /// r-th equal share, so its batches are the ones a single process draws at those steps.
    pub fn micro_steps(&self, all: usize) -> Range<usize> {
        let share = all / self.size();
        self.rank() * share..(self.rank() + 1) * share
    }

    /// Sums the gradients over the ranks, and this iteration's loss sum with them, so every rank
    /// knows the whole iteration's loss.
    pub fn reduce(&mut self, engine: &mut dyn Engine, loss_sum: f64) -> Result<f64> {
        let Some(ring) = &mut self.ring else {
            return Ok(loss_sum);
        };
        engine.all_reduce_grads(ring)?;
        let mut loss = [loss_sum as f32];
        ring.all_reduce_sum(&mut loss)?;
        Ok(f64::from(loss[0]))
    }

    /// Whether to stop after this iteration: when any rank was asked to, all stop together (a
    /// rank that stopped alone would leave the others waiting in the next sum).
    pub fn agree_to_stop(&mut self, asked: bool) -> Result<bool> {
        let Some(ring) = &mut self.ring else {
            return Ok(asked);
        };
        let mut flag = [f32::from(u8::from(asked))];
        ring.all_reduce_sum(&mut flag)?;
        Ok(flag[0] > 0.0)
    }

    /// Checks that every rank holds the same parameters (they must, bit for bit).
    pub fn check_in_step(&mut self, engine: &dyn Engine) -> Result<()> {
        match &mut self.ring {
            Some(ring) => check_same_on_every_rank(ring, &engine.model().params, "parameters"),
            None => Ok(()),
        }
    }
}
