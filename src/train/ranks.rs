//! This process's part in a data-parallel run (see [`crate::dist`]): alone, or rank r of W.
//! nanoGPT's DDP semantics: `batch_size` is per rank, the iteration's
//! `gradient_accumulation_steps` are shared out between the ranks, and rank 0 alone logs,
//! evaluates, writes `metrics.jsonl` and saves checkpoints. With `zero_stage=1` each rank keeps
//! AdamW's moments for its part of the parameters only, and they are gathered for checkpoints.

use super::config::TrainConfig;
use crate::dist::{self, check_same_on_every_rank, ring::Ring, Collective, World};
use crate::engine::{Engine, OptimizerState};
use anyhow::{bail, Result};
use std::ops::Range;

pub struct Ranks {
    ring: Option<Ring>,
    /// ZeRO-1: the optimizer state is sharded across the ranks.
    zero1: bool,
}

impl Ranks {
    /// Joins the run the environment describes (a launcher's variables), or trains alone.
    pub fn join(cfg: &TrainConfig) -> Result<Ranks> {
        let Some(world) = World::from_env()? else {
            return Ok(Ranks {
                ring: None,
                zero1: false,
            });
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
            zero1: cfg.zero_stage == 1,
        })
    }

    /// Lets the engine open its device-side collective (NCCL for GPU ranks); every rank calls
    /// it once, after opening its engine.
    pub fn connect_engine(&mut self, engine: &mut dyn Engine) -> Result<()> {
        match &mut self.ring {
            Some(ring) => engine.use_device_collective(ring),
            None => Ok(()),
        }
    }

    /// Whether a launcher started this process (a run of one rank included).
    pub fn launched(&self) -> bool {
        self.ring.is_some()
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

    /// A micro-step's backward pass; the iteration's `last` one, in a data-parallel run without
    /// ZeRO-1, also sums the gradients over the ranks (overlapped with the pass where the engine
    /// can: [`Engine::backward_all_reduced`]).
    pub fn backward(&mut self, engine: &mut dyn Engine, grad_scale: f32, last: bool) -> Result<()> {
        match &mut self.ring {
            Some(ring) if last && !self.zero1 => engine.backward_all_reduced(grad_scale, ring),
            _ => engine.backward(grad_scale),
        }
    }

    /// The iteration's update, after [`Ranks::backward`]'s last micro-step: clips to `grad_clip`
    /// and takes the AdamW step (with ZeRO-1, sums each rank's part of the gradients first and
    /// updates only that part). Sums this iteration's loss too, so every rank knows the whole
    /// iteration's loss, and returns it.
    pub fn update(
        &mut self,
        engine: &mut dyn Engine,
        loss_sum: f64,
        lr: f32,
        grad_clip: f32,
    ) -> Result<f64> {
        let Some(ring) = &mut self.ring else {
            engine.update(lr, grad_clip);
            return Ok(loss_sum);
        };
        if self.zero1 {
            engine.update_zero1(lr, grad_clip, ring)?;
        } else {
            engine.update(lr, grad_clip);
        }
        let mut loss = [loss_sum as f32];
        ring.all_reduce_sum(&mut loss)?;
        Ok(f64::from(loss[0]))
    }

    /// With ZeRO-1, rank 0 gets the whole optimizer state, gathered from every rank's part, for
    /// its checkpoint; every rank must call this at the same iterations, and only rank 0 holds
    /// the whole (the others need no more memory than their part). `None`: the engine holds the
    /// whole state itself (or this is not rank 0).
    pub fn gather_optimizer_state(
        &mut self,
        engine: &dyn Engine,
    ) -> Result<Option<OptimizerState>> {
        let (Some(ring), true) = (&mut self.ring, self.zero1) else {
            return Ok(None);
        };
        let n = engine.model().params.len();
        let part = engine.optimizer_state();
        if part.m.len() == n {
            // No step taken yet: nothing was sharded.
            return Ok(None);
        }
        let bounds = dist::shard_bounds(n, ring.world().size);
        let room = if ring.world().rank == 0 { n } else { 0 };
        let mut whole = OptimizerState {
            m: vec![0.0; room],
            v: vec![0.0; room],
            step: part.step,
        };
        dist::gather(ring, &part.m, &mut whole.m, &bounds)?;
        dist::gather(ring, &part.v, &mut whole.v, &bounds)?;
        Ok((room > 0).then_some(whole))
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
