#!/usr/bin/env python3
"""Side-by-side Shakespeare-char training run: nanogpt-rs (`nanogpt train`)
versus the PyTorch peer (benches/pytorch_train_shakespeare.py), both with
nanoGPT's config/train_shakespeare_char.py plus the overrides of nanoGPT's
CPU example (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
iterations, lr 1e-3 -> 1e-4, no dropout), on the same prepared data.

Steps: `nanogpt prepare shakespeare_char` into a temporary data dir (skipped
when train.bin/val.bin are already there), then our training run, then the
PyTorch one (one after the other, never at once). Each process's output is
read line by line and time-stamped, so for both sides we know:

  process wall  wall clock of the whole process (start-up, data, model init,
                our MFU peak probe, python/torch import, final save)
  loop wall     the training loop alone, evals and checkpoints included
                (ours: from the header line printed right before the loop to
                the "done:" line; PyTorch: the script's own wall_s)
  time to val   loop seconds at which an eval first reported
                val loss <= --target (default 1.88)

and prints a markdown table; ratios are pytorch / ours (> 1: ours faster).

Examples:
    python benches/compare_shakespeare.py                    # the full 2000 iterations
    python benches/compare_shakespeare.py --max_iters=30 --eval_interval=10
    python benches/compare_shakespeare.py --only=pytorch --max_iters=20
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "benches" / "pytorch_train_shakespeare.py"

EVAL_RE = re.compile(r"^step (\d+): train loss ([0-9.eE+-]+|nan|inf), val loss ([0-9.eE+-]+|nan|inf)")
ITER_RE = re.compile(r"^iter (\d+): .*?time ([0-9.]+)ms")


def run_timed(cmd, env, timeout, echo):
    """Runs cmd, time-stamping every stdout line (seconds since start).
    Returns (rc, [(t, line)], process_wall_s, stderr_text, timed_out)."""
    t0 = time.perf_counter()
    lines = []
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, bufsize=1)
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(p.stderr.read()), daemon=True)
    reader.start()
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    try:
        for line in p.stdout:
            t = time.perf_counter() - t0
            line = line.rstrip("\n")
            lines.append((t, line))
            if echo and not line.startswith("{"):
                print(f"    {t:8.2f}s  {line}", file=sys.stderr, flush=True)
        rc = p.wait()
    except KeyboardInterrupt:
        p.kill()
        p.wait()
        raise
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    reader.join(timeout=5)
    timed_out = wall >= timeout
    return rc, lines, wall, "".join(err_chunks), timed_out


def parse_evals(lines, t_base):
    """[(iter, train, val, loop_t)] from "step N: train loss X, val loss Y" lines."""
    out = []
    for t, line in lines:
        m = EVAL_RE.match(line)
        if m:
            out.append((int(m.group(1)), float(m.group(2)), float(m.group(3)), t - t_base))
    return out


def first_reach(evals, target):
    for it, _tr, val, t in evals:
        if val <= target:
            return it, t
    return None


def fmt(v, spec=".1f", suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1337,
                   help="both sides' seed (init and batches; the two sides' random streams differ anyway)")
    p.add_argument("--lr_decay_iters", type=int, default=None,
                   help="default: max_iters (as in nanoGPT's CPU example)")
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--eval_iters", type=int, default=20)
    p.add_argument("--log_interval", type=int, default=10)
    p.add_argument("--warmup_iters", type=int, default=None,
                   help="default: min(100, lr_decay_iters // 20), i.e. 100 for the full run "
                        "(nanogpt-rs wants warmup_iters <= lr_decay_iters)")
    p.add_argument("--target", type=float, default=1.88,
                   help="val loss whose first crossing is timed")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for both sides (nanogpt --threads, torch.set_num_threads; "
                        "RAYON_NUM_THREADS/OMP_NUM_THREADS in the environment)")
    p.add_argument("--binary", default="target/release/nanogpt")
    p.add_argument("--python", default=os.path.expanduser("~/pyref/bin/python"))
    p.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"),
                   help="tinyshakespeare text for `nanogpt prepare`")
    p.add_argument("--work_dir", default=None,
                   help="where data and checkpoints go (default: a fresh temp dir, "
                        "removed afterwards unless --keep); prepared data there is reused")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--only", choices=["ours", "pytorch"], default=None, help="run one side only")
    p.add_argument("--pytorch_first", action="store_true", help="run PyTorch before ours")
    p.add_argument("--no_checkpoints", action="store_true",
                   help="PyTorch side skips checkpoint writes (ours always writes them)")
    p.add_argument("--quiet", action="store_true", help="don't echo the runs' output")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per run")
    p.add_argument("--json_out", default=None, help="also write the raw results here")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    binary = Path(a.binary)
    if not binary.is_absolute():
        binary = REPO / binary
    run_ours = a.only in (None, "ours")
    run_peer = a.only in (None, "pytorch")
    if not a.dry_run:
        if not binary.exists():
            sys.exit(f"{binary} not found; build it with `cargo build --release` or pass --binary")
        if run_peer and not Path(a.python).exists():
            sys.exit(f"python {a.python} not found; pass --python")

    own_tmp = a.work_dir is None
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="nanogpt_shakespeare_"))
    work.mkdir(parents=True, exist_ok=True)
    data_root = work / "data"
    data_dir = data_root / "shakespeare_char"  # where `prepare` puts it

    lr_decay_iters = a.lr_decay_iters if a.lr_decay_iters is not None else a.max_iters
    warmup_iters = (a.warmup_iters if a.warmup_iters is not None
                    else min(100, lr_decay_iters // 20))
    knobs = dict(
        eval_interval=a.eval_interval, eval_iters=a.eval_iters, log_interval=a.log_interval,
        gradient_accumulation_steps=1, batch_size=12, block_size=64, n_layer=4, n_head=4,
        n_embd=128, dropout="0.0", bias="false", learning_rate="1e-3", max_iters=a.max_iters,
        lr_decay_iters=lr_decay_iters, min_lr="1e-4", beta2=0.99, warmup_iters=warmup_iters,
        seed=a.seed,
    )
    knob_flags = [f"--{k}={v}" for k, v in knobs.items()]
    prep_cmd = [str(binary), "prepare", "shakespeare_char", f"--input={a.input}",
                f"--data_dir={data_root}"]
    ours_cmd = ([str(binary), "--threads", str(a.threads), "train",
                 "--dataset=shakespeare_char", f"--data_dir={data_root}",
                 f"--out_dir={work / 'out'}"] + knob_flags)
    peer_cmd = ([a.python, "-u", str(PEER), f"--data_dir={data_dir}",
                 f"--threads={a.threads}"] + knob_flags
                + ([] if a.no_checkpoints else [f"--out_dir={work / 'out_pytorch'}"]))
    if a.dry_run:
        for c in (prep_cmd, ours_cmd if run_ours else None, peer_cmd if run_peer else None):
            if c:
                print(shlex.join(c))
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
        return

    env = dict(os.environ)
    t = str(a.threads)
    env.update(RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, PYTHONUNBUFFERED="1")

    try:
        if not ((data_dir / "train.bin").is_file() and (data_dir / "val.bin").is_file()):
            print(f"preparing: {shlex.join(prep_cmd)}", file=sys.stderr, flush=True)
            p = subprocess.run(prep_cmd, cwd=REPO, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"prepare failed (rc={p.returncode}):\n{p.stderr or p.stdout}")

        results = {}
        order = [s for s in (["pytorch", "ours"] if a.pytorch_first else ["ours", "pytorch"])
                 if (s == "ours" and run_ours) or (s == "pytorch" and run_peer)]
        for side in order:
            cmd = ours_cmd if side == "ours" else peer_cmd
            print(f"running {side}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
            rc, lines, wall, err, timed_out = run_timed(cmd, env, a.timeout, echo=not a.quiet)
            if rc != 0:
                why = f"timed out after {a.timeout}s" if timed_out else f"rc={rc}"
                print(f"  {side} failed ({why})", file=sys.stderr)
                for line in (err.strip().splitlines() or [l for _, l in lines])[-15:]:
                    print(f"    {line}", file=sys.stderr)
                results[side] = None
                continue
            if side == "ours":
                # the header ("... parameters, ... tokens per iteration ...") is
                # written right before the loop; "done:" right after the final save
                t_start = next((t for t, l in lines if "tokens per iteration" in l), 0.0)
                t_end = next((t for t, l in reversed(lines) if l.startswith("done:")), wall)
                evals = parse_evals(lines, t_start)
                iter_ms = [float(m.group(2)) for _, l in lines if (m := ITER_RE.match(l))]
                results[side] = dict(
                    process_wall_s=wall, loop_wall_s=t_end - t_start,
                    evals=[list(e[:3]) for e in evals], eval_t_s=[e[3] for e in evals],
                    final_val_loss=evals[-1][2] if evals else None,
                    best_val_loss=min(e[2] for e in evals) if evals else None,
                    ms_per_iter=statistics.median(iter_ms) if iter_ms else None,
                    ms_per_iter_note="median of the logged windows (log_interval iterations each)",
                )
            else:
                obj = None
                for _, l in reversed(lines):
                    if l.startswith("{"):
                        try:
                            obj = json.loads(l)
                            break
                        except json.JSONDecodeError:
                            pass
                if obj is None:
                    print("  pytorch printed no JSON result", file=sys.stderr)
                    results[side] = None
                    continue
                evals = [tuple(e) + (tt,) for e, tt in zip(obj["evals"], obj["eval_t_s"])]
                results[side] = dict(
                    process_wall_s=wall, loop_wall_s=obj["wall_s"],
                    train_wall_s=obj["train_wall_s"],
                    evals=obj["evals"], eval_t_s=obj["eval_t_s"],
                    final_val_loss=obj["final_val_loss"], best_val_loss=obj["best_val_loss"],
                    ms_per_iter=obj["ms_per_iter"], torch_version=obj.get("torch_version"),
                )
            r = results[side]
            ev = list(zip(r["evals"], r["eval_t_s"]))
            r["reached"] = first_reach([tuple(e) + (tt,) for e, tt in ev], a.target)
    finally:
        if own_tmp and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif own_tmp:
            print(f"kept {work}", file=sys.stderr)

    o, pt = results.get("ours"), results.get("pytorch")

    def ratio(key):
        if o and pt and o.get(key) and pt.get(key) is not None:
            return pt[key] / o[key]
        return None

    def reach(r):
        if not r:
            return "—"
        if not r["reached"]:
            return "not reached"
        it, tt = r["reached"]
        return f"{tt:.1f}s (iter {it})"

    def get(r, k):
        return r.get(k) if r else None

    tr = None
    if o and pt and o["reached"] and pt["reached"]:
        tr = pt["reached"][1] / o["reached"][1] if o["reached"][1] > 0 else None

    torch_v = get(pt, "torch_version")
    print()
    print(f"Shakespeare-char training, nanoGPT CPU example (4L/4H/128, block 64, batch 12, "
          f"{a.max_iters} iters, eval every {a.eval_interval} x {a.eval_iters} batches), "
          f"f32, {a.threads} threads" + (f", PyTorch {torch_v}" if torch_v else ""))
    print()
    print("| | nanogpt-rs | PyTorch | pytorch / ours |")
    print("|---|---:|---:|---:|")
    print(f"| process wall | {fmt(get(o, 'process_wall_s'), '.1f', ' s')} "
          f"| {fmt(get(pt, 'process_wall_s'), '.1f', ' s')} | {fmt(ratio('process_wall_s'), '.2f', 'x')} |")
    print(f"| loop wall (evals incl.) | {fmt(get(o, 'loop_wall_s'), '.1f', ' s')} "
          f"| {fmt(get(pt, 'loop_wall_s'), '.1f', ' s')} | {fmt(ratio('loop_wall_s'), '.2f', 'x')} |")
    print(f"| ms/iter (median) | {fmt(get(o, 'ms_per_iter'), '.1f')} "
          f"| {fmt(get(pt, 'ms_per_iter'), '.1f')} | {fmt(ratio('ms_per_iter'), '.2f', 'x')} |")
    print(f"| final val loss | {fmt(get(o, 'final_val_loss'), '.4f')} "
          f"| {fmt(get(pt, 'final_val_loss'), '.4f')} | |")
    print(f"| best val loss | {fmt(get(o, 'best_val_loss'), '.4f')} "
          f"| {fmt(get(pt, 'best_val_loss'), '.4f')} | |")
    print(f"| first val loss <= {a.target} (loop time) | {reach(o)} | {reach(pt)} "
          f"| {fmt(tr, '.2f', 'x')} |")

    if a.json_out:
        Path(a.json_out).write_text(json.dumps(
            {"ours": o, "pytorch": pt, "ours_cmd": ours_cmd, "pytorch_cmd": peer_cmd,
             "threads": a.threads, "target": a.target}, indent=2))
        print(f"\nraw results written to {a.json_out}", file=sys.stderr)
    if (run_ours and not o) or (run_peer and not pt):
        sys.exit(1)


if __name__ == "__main__":
    main()
