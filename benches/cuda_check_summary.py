"""The summary of benches/cuda_check.sh: reads a results folder's logs, writes cuda_check.json
there, prints the table and one RESULT line per issue, and exits 0 only when every checked issue
passed. `benches/cuda_check.sh summary RESULTS_DIR` runs it alone, on a folder from a cut run."""
import json, os, re, sys
out = sys.argv[1]
try:
    run = json.load(open(os.path.join(out, "run.json")))
except (OSError, ValueError):
    # The tests did not finish writing their facts: the run stopped during them.
    run = {"tests_exit": None, "rehearsal": False, "checks": "12 13 14"}
tests_rc = run["tests_exit"]
def tail(name, n):
    try:
        return open(os.path.join(out, name), errors="replace").read().splitlines()[-n:]
    except OSError:
        return []
def load(name):
    try:
        text = open(os.path.join(out, name + ".json")).read().strip().splitlines()
        r = json.loads(text[-1]) if text else None
    except (OSError, ValueError):
        r = None
    try:
        mem = [float(x) for x in open(os.path.join(out, name + ".mem")).read().split() if x.strip()]
        peak = max(mem) if mem else None
    except (OSError, ValueError):
        peak = None
    return {"result": r, "peak_gpu_mib_nvidia_smi": peak}
try:
    log = open(os.path.join(out, "cuda_device.log"), errors="replace").read()
except OSError:
    log = ""
# Each test's status. Under --nocapture a test's own output comes between "test NAME ... " and
# its status, which then starts a line of its own; a killed run leaves the last one unfinished.
tests = {}
lines = log.splitlines()
for i, line in enumerate(lines):
    m = re.match(r"test (\S+) \.\.\. ?(.*)$", line)
    if not m:
        continue
    status = "unfinished"
    for later in [m.group(2)] + lines[i + 1:]:
        word = later.strip()
        if word in ("ok", "FAILED", "ignored"):
            status = word
            break
        if re.match(r"test \S+ \.\.\. ", later):
            break
    tests[m.group(1)] = status
measured = [l for l in log.splitlines() if re.search(r"rel|losses|greedy|cuda .* cpu", l)]
summary = {
    "rehearsal_on_the_cpu_emulator": run["rehearsal"],
    "gpu": "\n".join(tail("gpu.txt", 5)).strip(),
    "tests_exit": tests_rc,
    "tests": tests,
    "measured": measured,
    "bench": {n: load(n) for n in ["bench_f32", "bench_tf32", "peer_f32", "peer_tf32", "peer_bf16_compile",
                                    "bench_bf16", "bench_bf16_b64", "bench_bf16_b64_gelu_kernel", "peer_bf16_compile_b64",
                                    "bench_f16"]},
}
def metrics(run):
    try:
        return [json.loads(l) for l in open(os.path.join(out, run, "metrics.jsonl"))]
    except (OSError, ValueError):
        return []
def steps(run):
    return [r for r in metrics(run) if "loss" in r]
def loss_lines(run):
    try:
        return re.findall(r"^iter (\d+): loss (\S+),", open(os.path.join(out, run + ".log")).read(), re.M)
    except OSError:
        return []
alone, nccl1 = steps("ddp_alone"), steps("ddp_nccl1")
# tokens/s of the last two log windows (the first ones include start-up and kernel loading).
tok = lambda rows: sum(r["tokens_per_s"] for r in rows[-2:]) / 2 if len(rows) >= 2 else float("nan")
cpu1, cpu2 = loss_lines("ddp_cpu1"), loss_lines("ddp_cpu2")
summary["ddp"] = {
    "nccl1_losses_identical": bool(alone) and [r["loss"] for r in alone] == [r["loss"] for r in nccl1],
    "alone_tokens_per_s": tok(alone),
    "nccl1_tokens_per_s": tok(nccl1),
    "nccl1_over_alone": tok(nccl1) / tok(alone) if alone and nccl1 else float("nan"),
    "cpu_2_ranks_losses_equal_1_process": len(cpu1) == 21 and cpu1 == cpu2,
}
d = summary["ddp"]
ddp_ok = d["nccl1_losses_identical"] and d["nccl1_over_alone"] >= 0.98 and d["cpu_2_ranks_losses_equal_1_process"]
def last_eval(run):
    rows = [r for r in metrics(run) if "val_loss" in r]
    return rows[-1] if rows else None
e32, e16 = last_eval("bpe_float32"), last_eval("bpe_bfloat16")
rate = lambda n: (summary["bench"][n]["result"] or {}).get("tokens_per_s", float("nan"))
summary["bf16"] = {
    "final_f32": e32, "final_bf16": e16,
    "val_loss_diff": abs(e16["val_loss"] - e32["val_loss"]) if e32 and e16 else None,
    "train_loss_diff": abs(e16["train_loss"] - e32["train_loss"]) if e32 and e16 else None,
    "b64_over_peer": rate("bench_bf16_b64") / rate("peer_bf16_compile_b64"),
    # nanoGPT's train_gpt2 schedule: 600k iterations of 491,520 tokens, at the B=64 rate.
    "train_gpt2_days_one_h200": 600000 * 491520 / rate("bench_bf16_b64") / 86400,
}
# The profile's table, largest first, follows its header line (the bench's own output may precede it).
profile = tail("bench_bf16_profile.txt", 10000)
start = next((i for i, l in enumerate(profile) if l.startswith("GPU time by kernel")), len(profile))
summary["bf16"]["profile_top"] = profile[start:start + 16]
# A sanitizer run is clean when it exits 0 (--error-exitcode 9 on a finding) and the test passed.
def sanitized(tool):
    try:
        rc = int(open(os.path.join(out, tool + "_bf16.rc")).read())
    except (OSError, ValueError):
        return False
    return rc == 0 and any(l.startswith("test result: ok") for l in tail(tool + "_bf16.log", 10))
for tool in ("memcheck", "racecheck"):
    summary["bf16"][tool + "_tail"] = tail(tool + "_bf16.log", 3)
    summary["bf16"][tool + "_clean"] = sanitized(tool)
json.dump(summary, open(os.path.join(out, "cuda_check.json"), "w"), indent=2)
print("\n== cuda_check summary ==")
if summary["rehearsal_on_the_cpu_emulator"]:
    print("REHEARSAL on the CPU emulator of CUDA, toy models: the figures mean nothing")
print("GPU:", summary["gpu"])
for name, status in tests.items():
    print(f"  {status:>6}  {name}")
for line in measured:
    print("   ", line)
print(f"{'run':<28}{'ms/iter':>10}{'tokens/s':>12}{'MFU':>8}{'peak GPU MiB':>14}")
for name, b in summary["bench"].items():
    r = b["result"] or {}
    mfu = r.get("mfu")
    print(f"{name:<28}{r.get('ms_per_iter', float('nan')):>10.1f}{r.get('tokens_per_s', float('nan')):>12.0f}"
          f"{(f'{100 * mfu:.1f}%' if mfu is not None else '-'):>8}{b['peak_gpu_mib_nvidia_smi'] or float('nan'):>14.0f}")
print(f"DDP: NCCL world 1 losses identical to no launcher: {d['nccl1_losses_identical']}; tokens/s "
      f"{d['nccl1_tokens_per_s']:.0f} vs {d['alone_tokens_per_s']:.0f} ({d['nccl1_over_alone']:.4f}x, need >= 0.98); "
      f"2 CPU ranks log 1 process's losses: {d['cpu_2_ranks_losses_equal_1_process']}")
b = summary["bf16"]
for line in b["profile_top"] + b["memcheck_tail"] + b["racecheck_tail"]:
    print("   ", line)
skipped = sorted(os.path.splitext(f)[0] for f in os.listdir(out)
                 if f.endswith((".err", ".log", ".txt")) and any(l.startswith("skipped: DEADLINE") for l in tail(f, 1)))
if skipped:
    print("skipped, out of time (DEADLINE):", ", ".join(skipped))
print(f"bf16, 200 steps of tiny Shakespeare: final train/val loss f32 {b['final_f32']}, bf16 {b['final_bf16']}; "
      f"val diff {b['val_loss_diff']} (need <= 0.02); B=64 tokens/s over the peer's bf16 + compile "
      f"{b['b64_over_peer']:.2f}x; train_gpt2's 600k x 0.5M tokens on one H200: {b['train_gpt2_days_one_h200']:.1f} days")
# Issue 12 is judged on the exact (f32) tests, issue 13 on the bf16 and f16 ones (their names
# say which); the harness must have finished (a killed run leaves tests unreported).
finished = re.search(r"^test result:", log, re.M) is not None
low_precision = {n: s for n, s in tests.items() if re.search(r"f16|stochastic", n)}
exact = {n: s for n, s in tests.items() if n not in low_precision}
bf16_ok = (finished and len(low_precision) >= 5 and all(s == "ok" for s in low_precision.values())
           and b["val_loss_diff"] is not None and b["val_loss_diff"] <= 0.02 and b["train_loss_diff"] <= 0.02
           and b["memcheck_clean"] and b["racecheck_clean"])
ok = finished and bool(exact) and all(s == "ok" for s in exact.values())
# Issue 12's verdict is the exact tests', which always run (section 5 only adds figures).
checks = run["checks"].split() + ["12"]
verdicts = {"12": ("issue 12 (CUDA, exact)", ok), "14": ("issue 14 (DDP device check)", ddp_ok),
            "13": ("issue 13 so far (bf16/f16 tests, bf16 accuracy, memcheck, racecheck; its speed targets are read from the table)", bf16_ok)}
for issue, (what, passed) in verdicts.items():
    print(f"RESULT {what}:", ("PASS" if passed else "FAIL") if issue in checks else "not run (CHECKS)")
all_ok = all(passed for issue, (_, passed) in verdicts.items() if issue in checks)
print("RESULT:", "PASS" if all_ok else "FAIL", "->", os.path.join(out, "cuda_check.json"))
sys.exit(0 if all_ok else 1)
