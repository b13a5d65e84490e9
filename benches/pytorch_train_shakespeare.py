#!/usr/bin/env python3
"""PyTorch peer for the Shakespeare-char training run: nanoGPT's train.py with
config/train_shakespeare_char.py and the overrides of nanoGPT's CPU example
(4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations, no
dropout), in plain PyTorch, for a wall-time comparison with
`nanogpt train`.

The model is the GPT of benches/pytorch_train_step.py (nanoGPT's layout,
init and AdamW decay/no-decay groups). The loop follows nanoGPT's train.py:
seeded random batches from np.memmap'd train.bin/val.bin, warm-up + cosine
learning-rate schedule, estimate_loss every eval_interval iterations
(including iteration 0), gradient accumulation, clip_grad_norm_, AdamW
(fused=False), zero_grad(set_to_none=True), logging every log_interval, and
a stop after iteration max_iters (so max_iters + 1 optimizer steps).

float32 on CPU, torch.set_num_threads(--threads), no torch.compile.

The last line printed is one JSON object:
  impl, wall_s (whole loop, evals included), train_wall_s (loop minus the
  eval/checkpoint blocks), eval_wall_s, final_val_loss, best_val_loss,
  evals [[iter, train, val], ...], eval_t_s (loop seconds at which each eval
  finished), iters (optimizer steps), ms_per_iter (median training step),
  plus the configuration.

Every nanoGPT knob below is overridable as --key=value. With --out_dir a
checkpoint (model, optimizer, config) is written like nanoGPT does: after an
eval that improved val loss, never at iteration 0; that time counts towards
the eval blocks.

Example:
    python benches/pytorch_train_shakespeare.py --data_dir=data/shakespeare_char
    python benches/pytorch_train_shakespeare.py --max_iters=30 --eval_interval=10 --json_only
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_train_step import GPT, Config, parse_bool  # noqa: E402

# config/train_shakespeare_char.py + the CPU example overrides
# (--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
#  --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --eval_iters=20),
# log_interval 10 instead of the example's 1
DEFAULTS = dict(
    eval_interval=250,
    eval_iters=20,
    log_interval=10,
    gradient_accumulation_steps=1,
    batch_size=12,
    block_size=64,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    bias=False,
    learning_rate=1e-3,
    max_iters=2000,
    lr_decay_iters=2000,
    min_lr=1e-4,
    beta1=0.9,
    beta2=0.99,
    warmup_iters=100,
    weight_decay=0.1,
    grad_clip=1.0,
    decay_lr=True,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in DEFAULTS.items():
        typ = parse_bool if isinstance(v, bool) else type(v)
        p.add_argument(f"--{k}", type=typ, default=v, help=f"default {v}")
    p.add_argument("--data_dir", default="data/shakespeare_char",
                   help="directory with train.bin, val.bin (uint16) and optionally meta.json")
    p.add_argument("--out_dir", default="",
                   help="write nanoGPT-style checkpoints here (default: none)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json_only", action="store_true",
                   help="print only the final JSON line")
    a = p.parse_args(argv)
    for k in ("eval_interval", "log_interval", "gradient_accumulation_steps",
              "batch_size", "block_size", "eval_iters"):
        if getattr(a, k) < 1:
            p.error(f"--{k} must be >= 1")
    return a


def vocab_size_of(data_dir):
    meta = os.path.join(data_dir, "meta.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            v = json.load(f).get("vocab_size")
        if v:
            return int(v)
    return 65


def main(argv=None):
    a = parse_args(argv)
    say = (lambda *args, **kw: None) if a.json_only else print
    for split in ("train", "val"):
        path = os.path.join(a.data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            sys.exit(f"{path} not found (prepare the dataset, or pass --data_dir)")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = "cpu"
    B, T = a.batch_size, a.block_size
    vocab_size = vocab_size_of(a.data_dir)

    # nanoGPT's get_batch: a fresh memmap per call (avoids the memmap leak),
    # torch.randint offsets from the global generator
    def get_batch(split):
        data = np.memmap(os.path.join(a.data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    cfg = Config(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=T,
                 vocab_size=vocab_size, bias=a.bias, dropout=a.dropout)
    model = GPT(cfg)
    model.to(device)
    optimizer = model.make_optimizer(a.weight_decay, a.learning_rate, (a.beta1, a.beta2))
    config = {k: getattr(a, k) for k in DEFAULTS}
    config.update(vocab_size=vocab_size, threads=a.threads, seed=a.seed)
    say(f"pytorch {torch.__version__}, {a.threads} threads, "
        f"{model.num_params() / 1e6:.2f}M parameters, "
        f"{a.gradient_accumulation_steps * B * T} tokens per iteration")

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(a.eval_iters)
            for k in range(a.eval_iters):
                X, Y = get_batch(split)
                _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        if it < a.warmup_iters:
            return a.learning_rate * (it + 1) / (a.warmup_iters + 1)
        if it > a.lr_decay_iters:
            return a.min_lr
        decay_ratio = (it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters)
        assert 0 <= decay_ratio <= 1
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return a.min_lr + coeff * (a.learning_rate - a.min_lr)

    evals, eval_t, step_s = [], [], []
    eval_wall = 0.0
    best_val_loss = 1e9
    iter_num = 0
    model.train()

    loop_t0 = time.perf_counter()
    X, Y = get_batch("train")
    while True:
        lr = get_lr(iter_num) if a.decay_lr else a.learning_rate
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % a.eval_interval == 0:
            te = time.perf_counter()
            losses = estimate_loss()
            say(f"step {iter_num}: train loss {losses['train']:.4f}, "
                f"val loss {losses['val']:.4f}", flush=True)
            evals.append([iter_num, losses["train"], losses["val"]])
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                if iter_num > 0 and a.out_dir:
                    os.makedirs(a.out_dir, exist_ok=True)
                    torch.save({
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "model_args": vars(cfg).copy(),
                        "iter_num": iter_num,
                        "best_val_loss": best_val_loss,
                        "config": config,
                    }, os.path.join(a.out_dir, "ckpt.pt"))
                    say(f"saving checkpoint to {a.out_dir}")
            now = time.perf_counter()
            eval_wall += now - te
            eval_t.append(now - loop_t0)

        t0 = time.perf_counter()
        for _ in range(a.gradient_accumulation_steps):
            _, loss = model(X, Y)
            loss = loss / a.gradient_accumulation_steps
            # next batch fetched before backward, in nanoGPT's order (there it
            # overlaps with the GPU; here it only keeps the RNG stream the same)
            X, Y = get_batch("train")
            loss.backward()
        if a.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        step_s.append(dt)

        if iter_num % a.log_interval == 0:
            lossf = loss.item() * a.gradient_accumulation_steps
            say(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.3e}, time {dt * 1000:.2f}ms, "
                f"{a.gradient_accumulation_steps * B * T / dt:.0f} tok/s", flush=True)
        iter_num += 1
        if iter_num > a.max_iters:
            break
    wall = time.perf_counter() - loop_t0

    result = {
        "impl": "pytorch",
        "wall_s": wall,
        "train_wall_s": wall - eval_wall,
        "eval_wall_s": eval_wall,
        "final_val_loss": evals[-1][2] if evals else None,
        "best_val_loss": min(e[2] for e in evals) if evals else None,
        "evals": evals,
        "eval_t_s": eval_t,
        "iters": len(step_s),
        "ms_per_iter": statistics.median(step_s) * 1000.0,
        "torch_version": torch.__version__,
        "config": config,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
