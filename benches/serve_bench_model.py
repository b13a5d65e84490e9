#!/usr/bin/env python3
"""Make the benchmark model for benches/serve_bench.sh: GPT-2 124M with deterministic random weights.

Usage: python serve_bench_model.py OUT_DIR VOCAB_JSON MERGES_TXT

Writes a Hugging Face directory (config.json with n_ctx, model.safetensors, GPT-2's tokenizer files).
VOCAB_JSON / MERGES_TXT are GPT-2's encoder.json / vocab.bpe (the tiktoken-rs crate ships both in its
assets/ folder, under the cargo registry). Needs torch and transformers.
"""
import json
import os
import shutil
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast


def main():
    out, vocab, merges = sys.argv[1:4]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(vocab, os.path.join(out, "vocab.json"))
    shutil.copyfile(merges, os.path.join(out, "merges.txt"))
    # from_pretrained builds the fast tokenizer from vocab.json + merges.txt (the constructor's keyword
    # arguments changed in transformers 5 and silently give an empty vocabulary).
    tok = GPT2TokenizerFast.from_pretrained(out)
    assert len(tok) == 50257 and tok.encode("Hello world") == [15496, 995], "GPT-2 tokenizer not loaded"
    tok.save_pretrained(out)  # tokenizer.json + tokenizer_config.json
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.setdefault("n_ctx", cfg.get("n_positions", 1024))
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    print("wrote", out, "params:", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
