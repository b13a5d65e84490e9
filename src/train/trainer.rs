//! The training loop, as nanoGPT's train.py runs it: evaluate every eval_interval, checkpoint,
//! then gradient_accumulation_steps micro-batches, clip, AdamW, log.

use super::config::{learning_rate_at, TrainConfig};
use super::metrics::Metrics;
use super::ranks::Ranks;
use super::run_dir;
use crate::checkpoint;
use crate::data::batch::mask_to_completions;
use crate::data::dataset;
use crate::data::TokenSplit;
use crate::engine::{self, AdamW, Engine, Mode, OptimizerState};
use crate::load::{self, TrainStart};
use crate::perf::mfu;
use crate::rng::{mix64, Rng};
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// The mean loss of each iteration run in this session, in order.
    pub losses: Vec<f32>,
    /// (iter, train loss, val loss) of each evaluation.
    pub evals: Vec<(usize, f32, f32)>,
    pub best_val_loss: f32,
    /// The next iteration to run (what a resume would start from).
    pub iter_num: usize,
    pub stopped_by_user: bool,
}

/// Seeds derived from (run seed, iteration, micro-step): the data order and dropout masks depend
/// only on where training is, so a resumed run draws exactly what an uninterrupted one would.
fn stream_seed(seed: u64, purpose: u64, iter: usize, micro: usize) -> u64 {
    mix64(seed ^ mix64(purpose ^ mix64((iter as u64) << 16 | micro as u64)))
}
const BATCHES: u64 = 1;
const DROPOUT: u64 = 2;
const EVAL_BATCHES: u64 = 3;

/// Runs training as configured. Progress goes to `log`; `stop` (set by Ctrl-C) ends the run after
/// the current iteration with a checkpoint. Under a launcher (`nanogpt launch`, torchrun, Slurm,
/// mpirun) this process is one rank of a data-parallel run, and only rank 0 writes to `log`.
pub fn train(cfg: &TrainConfig, log: &mut dyn Write, stop: &AtomicBool) -> Result<TrainSummary> {
    cfg.validate()?;
    let mut ranks = Ranks::join(cfg)?;
    if ranks.leader() {
        run(cfg, log, stop, &mut ranks)
    } else {
        let rank = ranks.rank();
        run(cfg, &mut std::io::sink(), stop, &mut ranks)
            .map_err(|e| e.context(format!("rank {rank}")))
    }
}

fn run(
    cfg: &TrainConfig,
    log: &mut dyn Write,
    stop: &AtomicBool,
    ranks: &mut Ranks,
) -> Result<TrainSummary> {
    let leader = ranks.leader();
    let data_dir = cfg.dataset_dir();
    let out_dir = cfg.out_dir();
    let hyper = AdamW {
        lr: cfg.learning_rate,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };

    // Held until training returns; taken before loading so a resume reads a checkpoint no
    // other run is writing. Rank 0 holds it for the whole data-parallel run.
    let run = if leader {
        Some(run_dir::lock(&out_dir)?)
    } else {
        None
    };
    let TrainStart {
        model,
        opt,
        mut iter_num,
        mut best_val_loss,
        world_size,
    } = load::for_training(cfg, log)?;
    if cfg.init_from == "resume" && world_size != ranks.size() {
        // Batches and dropout follow the global micro-step, whoever runs it: the run goes on
        // with the same data, only the gradients add in another order (float rounding).
        writeln!(
            log,
            "note: resuming a run of {world_size} rank(s) with {}: the same batches continue, but the losses will match the earlier ranks' only to float rounding",
            ranks.size()
        )?;
    }
    let mcfg = model.config.clone();
    let mut engine = engine::open(model, cfg.device)?;
    ranks.connect_engine(engine.as_mut())?;
    engine.set_adamw(hyper);
    let dtype = cfg.dtype.unwrap_or_else(|| engine.default_training_dtype());
    engine.set_training_dtype(dtype)?;
    engine.set_activation_recompute(cfg.recompute);
    engine.set_seed(cfg.seed);
    if let Some(opt) = opt {
        engine.set_optimizer_state(opt)?;
    }
    let (b, t) = (cfg.batch_size, cfg.block_size.min(mcfg.block_size));
    let train_data = Split::open(cfg, &data_dir, "train", mcfg.vocab_size, t)?;
    let val_data = Split::open(cfg, &data_dir, "val", mcfg.vocab_size, t)?;
    // After loading, so init_from may name a checkpoint inside this out_dir.
    let mut metrics = match run {
        Some(run) => {
            if cfg.init_from != "resume" {
                run.set_aside_previous(log)?;
            }
            Metrics::open(&out_dir.join("metrics.jsonl"))?
        }
        None => Metrics::silent(),
    };

    let (peak, peak_source) = if cfg.peak_tflops > 0.0 {
        (cfg.peak_tflops, "peak_tflops")
    } else {
        engine.peak_tflops()
    };
    // Over all ranks: each runs its share of the micro-batches.
    let tokens_per_iter = cfg.gradient_accumulation_steps * b * t;
    let flops_per_iter = mcfg.flops_per_token(t) * tokens_per_iter as f64;
    let mfu_against = if peak.is_finite() {
        format!(
            "MFU against {:.1} GFLOP/s ({peak_source})",
            peak * 1e3 * ranks.size() as f64
        )
    } else {
        format!("no MFU ({peak_source})")
    };
    writeln!(
        log,
        "{:.2}M parameters, {} tokens per iteration ({} x {} x {}), on {}{} in {dtype}; {mfu_against}",
        mcfg.num_params() as f64 / 1e6,
        tokens_per_iter,
        cfg.gradient_accumulation_steps,
        b,
        t,
        engine.device_name(),
        match (ranks.size(), cfg.zero_stage) {
            (1, _) if !ranks.launched() => String::new(),
            (n, 0) => format!(" x {n} ranks"),
            (n, _) => format!(" x {n} ranks (ZeRO-1: AdamW's moments split between them)"),
        },
    )?;

    let world_size = ranks.size();
    // `gathered`: the optimizer state from every rank under ZeRO-1, else the engine has it all.
    let save = |name: &str,
                engine: &dyn Engine,
                gathered: &Option<OptimizerState>,
                iter_num,
                best_val_loss| {
        let opt = gathered
            .as_ref()
            .map_or_else(|| engine.optimizer_state(), Cow::Borrowed);
        checkpoint::save(
            &out_dir.join(name),
            engine,
            &opt,
            cfg,
            iter_num,
            best_val_loss,
            world_size,
        )
    };
    let mut summary = TrainSummary {
        best_val_loss,
        ..Default::default()
    };
    if iter_num > cfg.max_iters && !cfg.eval_only {
        // A finished run resumed (or one killed just after its last save): another iteration
        // would train past max_iters.
        writeln!(
            log,
            "nothing to train: the checkpoint is at iteration {iter_num}, past max_iters={}; raise max_iters to train further",
            cfg.max_iters
        )?;
        summary.iter_num = iter_num;
        return Ok(summary);
    }
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    let mut ema_ms: Option<f64> = None;
    let mut window = (Instant::now(), 0usize);
    loop {
        let lr = learning_rate_at(cfg, iter_num);
        let eval_now = iter_num % cfg.eval_interval == 0;
        let may_save = eval_now && iter_num > 0 && !cfg.eval_only;
        if eval_now {
            // Not at every log line: on a GPU that would copy the parameters to the host.
            ranks.check_in_step(engine.as_ref())?;
        }
        // Every rank takes part in the gathering, whether rank 0 then saves or not.
        let gathered = if may_save {
            ranks.gather_optimizer_state(engine.as_ref())?
        } else {
            None
        };
        if leader && eval_now {
            let (train_loss, val_loss) = (
                estimate_loss(
                    engine.as_mut(),
                    &train_data,
                    cfg,
                    iter_num,
                    b,
                    t,
                    &mut x,
                    &mut y,
                )?,
                estimate_loss(
                    engine.as_mut(),
                    &val_data,
                    cfg,
                    iter_num,
                    b,
                    t,
                    &mut x,
                    &mut y,
                )?,
            );
            writeln!(
                log,
                "step {iter_num}: train loss {train_loss:.4}, val loss {val_loss:.4}"
            )?;
            metrics.eval(iter_num, train_loss, val_loss)?;
            if !(train_loss.is_finite() && val_loss.is_finite()) {
                bail!(
                    "evaluation at iteration {iter_num} gave a loss of {train_loss} / {val_loss}: training stopped without saving; {} \
                     (try a lower learning_rate or grad_clip)",
                    what_is_kept(&out_dir)
                );
            }
            summary.evals.push((iter_num, train_loss, val_loss));
            // "best" is the lowest val loss seen; "latest" follows always_save_checkpoint.
            let improved = val_loss < best_val_loss;
            if improved {
                best_val_loss = val_loss;
            }
            if may_save {
                if improved {
                    save("best", engine.as_ref(), &gathered, iter_num, best_val_loss)?;
                }
                if improved || cfg.always_save_checkpoint {
                    save(
                        "latest",
                        engine.as_ref(),
                        &gathered,
                        iter_num,
                        best_val_loss,
                    )?;
                    writeln!(
                        log,
                        "saved checkpoint to {}{}",
                        out_dir.join("latest").display(),
                        if improved { " and best/" } else { "" }
                    )?;
                }
            }
        }
        if cfg.eval_only {
            break;
        }

        let t0 = Instant::now();
        engine.zero_grad();
        let mut loss_sum = 0.0f64;
        let micro_steps = ranks.micro_steps(cfg.gradient_accumulation_steps);
        let last_micro = micro_steps.end - 1;
        for micro in micro_steps {
            let mut rng = Rng::new(stream_seed(cfg.seed, BATCHES, iter_num, micro));
            train_data.batch(&mut rng, b, t, &mut x, &mut y)?;
            let mode = Mode::Train {
                seed: stream_seed(cfg.seed, DROPOUT, iter_num, micro),
            };
            let loss = engine
                .forward(&x, Some(&y), b, t, mode)?
                .unwrap_or(f32::NAN);
            if !loss.is_finite() {
                bail!(
                    "loss became {loss} at iteration {iter_num}: training stopped; {} (try a lower learning_rate or grad_clip)",
                    what_is_kept(&out_dir)
                );
            }
            loss_sum += loss as f64;
            let grad_scale = 1.0 / cfg.gradient_accumulation_steps as f32;
            ranks.backward(engine.as_mut(), grad_scale, micro == last_micro)?;
        }
        let loss_sum = ranks.update(engine.as_mut(), loss_sum, lr, cfg.grad_clip)?;
        let loss = (loss_sum / cfg.gradient_accumulation_steps as f64) as f32;
        summary.losses.push(loss);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        ema_ms = Some(ema_ms.map_or(ms, |e| 0.9 * e + 0.1 * ms));
        window.1 += 1;
        if iter_num % cfg.log_interval == 0 {
            let secs = window.0.elapsed().as_secs_f64();
            let per_iter = secs / window.1 as f64;
            let tok_s = tokens_per_iter as f64 / per_iter;
            let m = mfu(flops_per_iter, per_iter, peak * ranks.size() as f64);
            let eta = ema_ms.unwrap_or(ms) / 1e3 * cfg.max_iters.saturating_sub(iter_num) as f64;
            // No peak known (a GPU missing from perf::GPU_PEAKS, the header line said so): no MFU.
            let mfu_text = if m.is_finite() {
                format!("{:.1}%", m * 100.0)
            } else {
                "n/a".to_string()
            };
            writeln!(
                log,
                "iter {iter_num}: loss {loss:.4}, lr {lr:.3e}, time {:.1}ms, {tok_s:.0} tok/s, mfu {mfu_text}, eta {}",
                per_iter * 1e3,
                format_duration(eta)
            )?;
            metrics.step(iter_num, loss, lr, per_iter * 1e3, tok_s, m)?;
            window = (Instant::now(), 0);
        }
        iter_num += 1;
        let interrupted = ranks.agree_to_stop(stop.load(Ordering::SeqCst))?;
        if interrupted || iter_num > cfg.max_iters {
            // Always end with a checkpoint to resume from, whatever the eval schedule.
            ranks.check_in_step(engine.as_ref())?;
            let gathered = ranks.gather_optimizer_state(engine.as_ref())?;
            if leader {
                save(
                    "latest",
                    engine.as_ref(),
                    &gathered,
                    iter_num,
                    best_val_loss,
                )?;
            }
            if interrupted {
                writeln!(log, "interrupted: saved {} at iteration {iter_num}; continue with --init_from=resume", out_dir.join("latest").display())?;
            } else {
                writeln!(
                    log,
                    "done: saved {} at iteration {iter_num}",
                    out_dir.join("latest").display()
                )?;
            }
            summary.stopped_by_user = interrupted;
            break;
        }
    }
    summary.best_val_loss = best_val_loss;
    summary.iter_num = iter_num;
    Ok(summary)
}

/// After a failed step: the checkpoint left to resume from, or that this run has none yet.
fn what_is_kept(out_dir: &Path) -> String {
    let latest = out_dir.join("latest");
    match checkpoint::resolve(&latest) {
        Some(dir) => format!("the last good checkpoint in {} is kept", dir.display()),
        None => format!("no checkpoint exists yet in {}", out_dir.display()),
    }
}

/// Mean loss over eval_iters random batches, without dropout. The batches depend only on the
/// iteration, so evaluating never disturbs the training stream.
#[allow(clippy::too_many_arguments)]
fn estimate_loss(
    model: &mut dyn Engine,
    data: &Split,
    cfg: &TrainConfig,
    iter: usize,
    b: usize,
    t: usize,
    x: &mut Vec<u32>,
    y: &mut Vec<i32>,
) -> Result<f32> {
    let mut rng = Rng::new(stream_seed(cfg.seed, EVAL_BATCHES, iter, 0));
    let mut total = 0.0f64;
    let n = cfg.eval_iters.max(1);
    for _ in 0..n {
        data.batch(&mut rng, b, t, x, y)?;
        total += model
            .forward(x, Some(y), b, t, Mode::Eval)?
            .unwrap_or(f32::NAN) as f64;
    }
    Ok((total / n as f64) as f32)
}

/// One split's tokens (`train.bin` or shards), and the completion-only mask (`loss_after`)
/// applied to its batches.
struct Split {
    tokens: TokenSplit,
    /// (separator, end-of-line) token ids when only completions are targets.
    completion: Option<(u32, u32)>,
    /// With `loss_after`, every window starts at a newline, then a whole line: one drawn
    /// mid-line would mask its first partial line (a fifth of a 128-token window of 54-token
    /// division lines), and `eval arithmetic` prompts with `"\n" + problem`, this shape.
    line_breaks: Option<Vec<usize>>,
}

impl Split {
    fn open(
        cfg: &TrainConfig,
        data_dir: &Path,
        split: &str,
        vocab: usize,
        block_size: usize,
    ) -> Result<Split> {
        let tokens = TokenSplit::open(data_dir, split, vocab)?;
        tokens.require_len(block_size)?;
        let completion = if cfg.loss_after.is_empty() {
            None
        } else {
            let Some(chars) = dataset::vocabulary(data_dir)? else {
                bail!(
                    "loss_after needs a character-level dataset (meta.json): {} has none",
                    data_dir.display()
                );
            };
            let id = |c: char, what: &str| {
                chars.id_of(c).with_context(|| {
                    format!(
                        "loss_after: {what} {c:?} is not in {}'s vocabulary",
                        data_dir.display()
                    )
                })
            };
            let mut sep = cfg.loss_after.chars();
            let (Some(c), None) = (sep.next(), sep.next()) else {
                bail!(
                    "loss_after must be a single character, got {:?}",
                    cfg.loss_after
                );
            };
            Some((id(c, "the separator")?, id('\n', "the newline")?))
        };
        let line_breaks = match completion {
            None => None,
            Some((_, eol)) => {
                let breaks = tokens.line_breaks(eol as u16, block_size);
                if breaks.is_empty() {
                    bail!(
                        "loss_after: {}'s {split} split has no line that leaves a window of \
                         block_size {block_size}; use one line per example, or a smaller block_size",
                        data_dir.display()
                    );
                }
                Some(breaks)
            }
        };
        Ok(Split {
            tokens,
            completion,
            line_breaks,
        })
    }

    fn batch(
        &self,
        rng: &mut Rng,
        b: usize,
        t: usize,
        x: &mut Vec<u32>,
        y: &mut Vec<i32>,
    ) -> Result<()> {
        match &self.line_breaks {
            Some(breaks) => self.tokens.get_batch_from_into(breaks, rng, b, t, x, y)?,
            None => self.tokens.get_batch_into(rng, b, t, x, y)?,
        }
        if let Some((sep, eol)) = self.completion {
            mask_to_completions(x, y, t, sep, eol);
        }
        Ok(())
    }
}

fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
