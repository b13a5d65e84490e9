#!/usr/bin/env python3
"""Side-by-side training-step benchmark: nanogpt-rs (`nanogpt bench`) versus
the PyTorch peer script (benches/pytorch_train_step.py).

For every selected config the two sides run in alternation (ours, pytorch,
ours, pytorch, ... for --rounds rounds) so slow drifts of a noisy machine hit
both equally; each side's figure is the median over its rounds. The result is
a markdown table; speedup = pytorch_ms / ours_ms (> 1 means nanogpt-rs is
faster).

Both sides use nanoGPT's defaults bias=False and dropout=0.0.

Examples:
    python benches/compare.py                          # all three configs
    python benches/compare.py --configs=cpu-small,char-6L --rounds=3
    python benches/compare.py --only=pytorch --iters=2 # peer side alone
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "benches" / "pytorch_train_step.py"

# name -> (model/batch shape, default timed iters, default pytorch warm-up)
CONFIGS = {
    "cpu-small": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64,
                       batch_size=12, vocab_size=65), 10, 3),
    "char-6L": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256,
                     batch_size=8, vocab_size=65), 5, 2),
    "gpt2-124M": (dict(n_layer=12, n_head=12, n_embd=768, block_size=256,
                       batch_size=2, vocab_size=50304), 3, 1),
}
COMMON = dict(bias="false", dropout="0.0")


def flags(d):
    return [f"--{k}={v}" for k, v in d.items()]


def last_json_object(text):
    """The last line of `text` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def run_json(cmd, env, timeout):
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout}s: {shlex.join(cmd)}", file=sys.stderr)
        return None
    wall = time.perf_counter() - t0
    obj = last_json_object(p.stdout) if p.returncode == 0 else None
    if obj is None:
        print(f"  failed (rc={p.returncode}): {shlex.join(cmd)}", file=sys.stderr)
        tail = (p.stderr or p.stdout).strip().splitlines()[-15:]
        for line in tail:
            print(f"    {line}", file=sys.stderr)
        return None
    obj["_wall_s"] = wall
    return obj


def med(results, key):
    vals = [r[key] for r in results if r is not None and isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".1f", suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configs: " + ", ".join(CONFIGS))
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per run for every config "
                        "(default per config: cpu-small 10, char-6L 5, gpt2-124M 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="PyTorch warm-up iterations (default per config: 3, 2, 1)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating runs per side; median is reported")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for both sides (torch.set_num_threads; "
                        "RAYON_NUM_THREADS/OMP_NUM_THREADS in the environment)")
    p.add_argument("--binary", default="target/release/nanogpt")
    p.add_argument("--python", default=os.path.expanduser("~/pyref/bin/python"))
    p.add_argument("--only", choices=["ours", "pytorch"], default=None,
                   help="run one side only")
    p.add_argument("--ours_args", default="",
                   help="extra arguments appended to the nanogpt bench command")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--json_out", default=None, help="also write all raw results here")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")

    binary = Path(a.binary)
    if not binary.is_absolute():
        binary = REPO / binary
    run_ours = a.only in (None, "ours")
    run_peer = a.only in (None, "pytorch")
    if run_ours and not a.dry_run and not binary.exists():
        sys.exit(f"{binary} not found; build it with `cargo build --release` "
                 f"or pass --binary (or --only=pytorch)")
    if run_peer and not a.dry_run and not Path(a.python).exists():
        sys.exit(f"python {a.python} not found; pass --python")

    env = dict(os.environ)
    t = str(a.threads)
    env.update(RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)

    rows, raw = [], {}
    for name in names:
        shape, def_iters, def_warmup = CONFIGS[name]
        iters = a.iters if a.iters is not None else def_iters
        warmup = a.warmup if a.warmup is not None else def_warmup
        model_flags = flags({**shape, **COMMON})
        ours_cmd = ([str(binary), "bench"] + model_flags
                    + [f"--iters={iters}", "--json"] + shlex.split(a.ours_args))
        peer_cmd = ([a.python, str(PEER)] + model_flags
                    + [f"--iters={iters}", f"--warmup={warmup}",
                       f"--threads={a.threads}", "--json"])
        if a.dry_run:
            print(f"# {name}")
            if run_ours:
                print(shlex.join(ours_cmd))
            if run_peer:
                print(shlex.join(peer_cmd))
            continue

        ours, peer = [], []
        for r in range(a.rounds):
            if run_ours:
                print(f"[{name}] round {r + 1}/{a.rounds}: nanogpt-rs ...",
                      file=sys.stderr, flush=True)
                ours.append(run_json(ours_cmd, env, a.timeout))
            if run_peer:
                print(f"[{name}] round {r + 1}/{a.rounds}: pytorch ...",
                      file=sys.stderr, flush=True)
                peer.append(run_json(peer_cmd, env, a.timeout))
        raw[name] = {"ours": ours, "pytorch": peer,
                     "ours_cmd": ours_cmd, "pytorch_cmd": peer_cmd}

        o_ms, p_ms = med(ours, "ms_per_iter"), med(peer, "ms_per_iter")
        rows.append(dict(
            name=name, iters=iters,
            o_ms=o_ms, p_ms=p_ms,
            speedup=(p_ms / o_ms) if (o_ms and p_ms) else None,
            o_tok=med(ours, "tokens_per_s"), p_tok=med(peer, "tokens_per_s"),
            o_mfu=med(ours, "mfu"),
            o_rss=med(ours, "peak_rss_mib"), p_rss=med(peer, "peak_rss_mib"),
        ))

    if a.dry_run:
        return

    torch_v = next((r.get("torch_version") for v in raw.values()
                    for r in v["pytorch"] if r), None)
    print()
    print(f"Training step (fwd+bwd+clip+AdamW), f32, {a.threads} threads, "
          f"median of {a.rounds} round(s)" + (f", PyTorch {torch_v}" if torch_v else ""))
    print()
    print("| config | iters | nanogpt-rs ms/iter | PyTorch ms/iter | speedup (pt/ours) "
          "| nanogpt-rs tok/s | PyTorch tok/s | nanogpt-rs MFU "
          "| nanogpt-rs peak RSS | PyTorch peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = r["o_mfu"]
        if mfu is not None and mfu <= 1.0:  # a fraction, as nanoGPT's estimate_mfu
            mfu *= 100.0
        print(f"| {r['name']} | {r['iters']} | {fmt(r['o_ms'])} | {fmt(r['p_ms'])} "
              f"| {fmt(r['speedup'], '.2f', 'x')} | {fmt(r['o_tok'], '.0f')} "
              f"| {fmt(r['p_tok'], '.0f')} | {fmt(mfu, '.2f', '%')} "
              f"| {fmt(r['o_rss'], '.0f', ' MiB')} | {fmt(r['p_rss'], '.0f', ' MiB')} |")

    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"rows": rows, "raw": raw}, indent=2))
        print(f"\nraw results written to {a.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
