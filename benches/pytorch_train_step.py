#!/usr/bin/env python3
"""PyTorch peer benchmark: one full GPT training step (forward, loss,
backward, grad clip, AdamW step, zero_grad), for side-by-side comparison
with `nanogpt bench`.

The model is a GPT-2-family transformer in plain PyTorch, laid out the same
way as nanoGPT: token + learned position embeddings, pre-LayerNorm blocks,
causal self-attention through F.scaled_dot_product_attention(is_causal=True),
tanh-approximated GELU MLP, final LayerNorm, lm_head tied to the token
embedding, optional biases and dropout. Initialisation and the AdamW
parameter groups follow nanoGPT's conventions.

Runs in float32 on CPU by default: no autocast, no torch.compile. On a GPU
(--device=cuda), --dtype=bfloat16 and --compile=true give nanoGPT's own
settings, and --tf32=true lets float32 matmuls use TF32 tensor cores.

Example:
    python benches/pytorch_train_step.py --n_layer=4 --n_head=4 --n_embd=128 \
        --block_size=64 --batch_size=12 --vocab_size=65 --iters=10 --json
"""
import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------
# model


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm before 2.1
    could not do that)."""

    def __init__(self, dim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        # q, k and v projections fused into a single matmul
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.drop(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # weight tying: output projection shares the token embedding matrix
        self.transformer.wte.weight = self.lm_head.weight

        # nanoGPT init: N(0, 0.02) for linears/embeddings, zero biases, and
        # residual output projections scaled by 1/sqrt(2 * n_layer)
        self.apply(self._init_weights)
        resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None):
        B, T = idx.shape
        assert T <= self.cfg.block_size, f"sequence length {T} > block_size"
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        return logits, loss

    def make_optimizer(self, weight_decay, lr, betas):
        # decay every parameter with >= 2 dims (matmul weights, embeddings),
        # leave biases and LayerNorm gains undecayed
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # fused on a GPU (as nanoGPT), not on the CPU; foreach left at PyTorch's default
        fused = self.transformer.wte.weight.is_cuda
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    def flops_per_token(self):
        # PaLM-style estimate used by nanoGPT's estimate_mfu: 6N + 12*L*H*Q*T
        c = self.cfg
        N = self.num_params()
        L, H, Q, T = c.n_layer, c.n_head, c.n_embd // c.n_head, c.block_size
        return 6 * N + 12 * L * H * Q * T


class Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


# --------------------------------------------------------------------------
# command line


def parse_bool(s):
    v = str(s).strip().lower()
    if v in ("true", "1", "yes", "y", "on"):
        return True
    if v in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # nanoGPT names and defaults (GPT-2 124M shape, bias off)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=50304)
    p.add_argument("--bias", type=parse_bool, default=False)
    p.add_argument("--dropout", type=float, default=0.0)
    # optimiser (nanoGPT defaults)
    p.add_argument("--learning_rate", type=float, default=6e-4)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--grad_clip", type=float, default=1.0)
    # benchmark control
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16 runs the model under autocast, as nanoGPT on a GPU")
    p.add_argument("--compile", type=parse_bool, default=False, help="torch.compile the model")
    p.add_argument("--tf32", type=parse_bool, default=False,
                   help="allow TF32 for float32 matmuls on the GPU")
    return p.parse_args(argv)


def peak_rss_mib():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def main(argv=None):
    a = parse_args(argv)
    if a.iters < 1:
        sys.exit("--iters must be >= 1")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    cfg = Config(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                 block_size=a.block_size, vocab_size=a.vocab_size,
                 bias=a.bias, dropout=a.dropout)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    model = GPT(cfg).to(dev)
    model.train()
    opt = model.make_optimizer(a.weight_decay, a.learning_rate, (a.beta1, a.beta2))
    flops_per_token = model.flops_per_token()
    n_params = model.num_params()
    run = torch.compile(model) if a.compile else model
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16,
                              enabled=a.dtype == "bfloat16")

    B, T, V = a.batch_size, a.block_size, a.vocab_size

    def step():
        x = torch.randint(0, V, (B, T), dtype=torch.long, device=dev)
        y = torch.randint(0, V, (B, T), dtype=torch.long, device=dev)
        with autocast:
            _, loss = run(x, y)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup):
        step()

    times, losses = [], []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)

    ms = statistics.median(times) * 1000.0
    tok_s = B * T / (ms / 1000.0)
    flops_per_iter = flops_per_token * B * T
    achieved = flops_per_iter / (ms / 1000.0)

    config = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                  block_size=T, batch_size=B, vocab_size=V, bias=a.bias,
                  dropout=a.dropout, iters=a.iters, warmup=a.warmup,
                  threads=a.threads, device=a.device, dtype=a.dtype,
                  compile=a.compile, tf32=a.tf32)
    result = {
        "impl": "pytorch",
        "ms_per_iter": ms,
        "tokens_per_s": tok_s,
        "ms_min": min(times) * 1000.0,
        "ms_mean": statistics.fmean(times) * 1000.0,
        "gflops_per_s": achieved / 1e9,
        "n_params": n_params,
        "final_loss": losses[-1],
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": (torch.cuda.max_memory_allocated() / 2**20
                         if dev.type == "cuda" else None),
        "torch_version": torch.__version__,
        "config": config,
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__} on {platform.machine()}, "
              f"{a.threads} threads, {n_params / 1e6:.2f}M params")
        print(f"config: {config}")
        print(f"ms/iter (median of {a.iters}): {ms:.2f}   "
              f"min {result['ms_min']:.2f}   mean {result['ms_mean']:.2f}")
        print(f"tokens/s: {tok_s:.1f}   ~{achieved / 1e9:.2f} GFLOP/s")
        print(f"last loss: {losses[-1]:.4f}   peak RSS: {result['peak_rss_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
