#!/usr/bin/env python3
"""Peer benchmark for autoregressive generation: Hugging Face transformers'
GPT2LMHeadModel (randomly initialised, no download) doing greedy decoding
with the KV cache, on CPU in float32.

Reports new tokens per second (batch_size * max_new_tokens / wall time,
median over --reps timed runs after one warm-up run). The time includes the
prompt's prefill.

Example:
    python benches/pytorch_generate.py --prompt_len=16 --max_new_tokens=128 --json
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from pytorch_train_step import parse_bool  # noqa: E402  (same folder; one boolean parser)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--vocab_size", type=int, default=50257)
    p.add_argument("--block_size", "--n_positions", dest="block_size", type=int,
                   default=1024, help="n_positions of the model")
    p.add_argument("--bias", type=parse_bool, default=True,
                   help="accepted for symmetry; GPT2LMHeadModel always has biases")
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="timed generations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def peak_rss_mib():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def main(argv=None):
    a = parse_args(argv)
    if a.prompt_len + a.max_new_tokens > a.block_size:
        sys.exit("prompt_len + max_new_tokens exceeds block_size (n_positions)")
    if a.reps < 1:
        sys.exit("--reps must be >= 1")
    if not a.bias:
        print("note: GPT2LMHeadModel has no bias-free variant; --bias ignored",
              file=sys.stderr)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()

    cfg = GPT2Config(
        vocab_size=a.vocab_size, n_positions=a.block_size, n_embd=a.n_embd,
        n_layer=a.n_layer, n_head=a.n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())

    prompt = torch.randint(0, a.vocab_size, (a.batch_size, a.prompt_len), dtype=torch.long)
    attn = torch.ones_like(prompt)
    gen_kwargs = dict(
        attention_mask=attn, do_sample=False, use_cache=True, num_beams=1,
        max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens,
        pad_token_id=0,
    )

    def run():
        t0 = time.perf_counter()
        out = model.generate(prompt, **gen_kwargs)
        dt = time.perf_counter() - t0
        new = out.shape[1] - a.prompt_len
        assert new == a.max_new_tokens, f"generated {new} tokens, wanted {a.max_new_tokens}"
        return dt

    with torch.no_grad():
        run()  # warm-up
        times = [run() for _ in range(a.reps)]

    t = statistics.median(times)
    new_tokens = a.batch_size * a.max_new_tokens
    tok_s = new_tokens / t
    config = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                  vocab_size=a.vocab_size, n_positions=a.block_size,
                  prompt_len=a.prompt_len, max_new_tokens=a.max_new_tokens,
                  batch_size=a.batch_size, reps=a.reps, threads=a.threads)
    result = {
        "impl": "transformers",
        "tokens_per_s": tok_s,
        # wall time per decoding step (one step yields batch_size tokens)
        "ms_per_token": t * 1000.0 / a.max_new_tokens,
        "s_per_generate": t,
        "n_params": n_params,
        "peak_rss_mib": peak_rss_mib(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config": config,
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"transformers {transformers.__version__} / torch {torch.__version__}, "
              f"{a.threads} threads, {n_params / 1e6:.2f}M params")
        print(f"config: {config}")
        print(f"new tokens/s (median of {a.reps}): {tok_s:.1f}   "
              f"ms/token step: {result['ms_per_token']:.2f}   "
              f"peak RSS: {result['peak_rss_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
