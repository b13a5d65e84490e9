#!/usr/bin/env bash
# The CUDA device check (issues 12, 13 and 14), in two halves:
#
#   benches/cuda_check.sh build         on a CPU machine with Rust: builds a portable, stripped
#                                       `nanogpt` and the tests/cuda_device.rs test binary into
#                                       target/cuda-check/ (x86-64-v3, not `native`)
#   benches/cuda_check.sh RESULTS_DIR   on the GPU machine (no Rust, no network), from the repo
#                                       root: runs every check, prints one summary and writes
#                                       RESULTS_DIR/cuda_check.json plus the raw logs
#
# The checks: (1) tiny-gpt2 against the PyTorch references: loss, every gradient, cached
# logits, the 10-step AdamW trajectory; (2) GPT-2 124M, one batch, CUDA against the CPU engine:
# loss and each tensor's gradient norm; (3) two identical runs (dropout on) give the same bits,
# so do runs with and without the LayerNorm and GELU outputs recomputed in backward, and dropout
# masks are the CPU's; (4) greedy decoding gives the CPU's ids; (5) GPT-2 124M at
# T=1024 B=12: tokens/s, ms/iter, MFU and peak GPU memory in f32 and with TF32, beside the
# PyTorch peer (benches/pytorch_train_step.py) in f32, f32+TF32 and nanoGPT's bf16 + compile;
# (6) data-parallel training (issue 14): NCCL at world size 1 against no launcher, and two CPU
# ranks over TCP against one process; (7) bf16 training (issue 13: the linear layers' products
# on the tensor cores through cuBLASLt, attention in flash kernels on mma.sync): GPT-2 124M at
# B=12 and B=64, T=1024, beside the peer's bf16 + compile at B=64, and float16 at B=12;
# compute-sanitizer's memcheck and racecheck over the bf16 test, and 200 steps on tiny
# Shakespeare (GPT-2 BPE) in bf16 and in f32, the final losses.
# Environment: FIXTURES (default ../shared/fixtures, else shared/fixtures), BIN_DIR (default
# target/cuda-check), PYTHON (default python3), CHECKS (which issues' sections run, see below).
#
#   REHEARSAL=1 benches/cuda_check.sh RESULTS_DIR   here, without a GPU: the whole script on the
#       CPU emulator of CUDA (tests/cuda_emulator), every model cut to a toy, with this
#       checkout's release binaries; it checks the script (flags, logs, the summary) before device
#       time is spent on it. Its figures mean nothing; the PyTorch peers fail without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/cuda-check}

if [ "${1:-}" = build ]; then
    set -e
    export RUSTFLAGS="-C target-cpu=x86-64-v3"
    cargo build --release --bin nanogpt --target-dir target/portable
    exe=$(cargo test --release --no-run --test cuda_device --target-dir target/portable 2>&1 |
        sed -n 's/.*Executable tests\/cuda_device.rs (\(.*\))/\1/p')
    test -n "$exe" || { echo "could not find the cuda_device test binary" >&2; exit 1; }
    mkdir -p "$BIN_DIR"
    cp target/portable/release/nanogpt "$exe" "$BIN_DIR/"
    mv "$BIN_DIR/$(basename "$exe")" "$BIN_DIR/cuda_device"
    strip "$BIN_DIR/nanogpt" "$BIN_DIR/cuda_device"
    ls -la "$BIN_DIR"
    exit 0
fi

[ $# -eq 1 ] || { echo "usage: benches/cuda_check.sh build | RESULTS_DIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# The models: GPT-2 124M's width and depth, the benchmark's context and batches, the runs' lengths.
GPT2=(--n_layer=12 --n_head=12 --n_embd=768)
T=1024 BATCH=12 BIG_BATCH=64 DDP_ITERS=40 BPE_T=256 BPE_ITERS=200 BPE_EVAL_ITERS=20
BENCH_ITERS=(--iters 10 --warmup 3)
if [ "${REHEARSAL:-0}" = 1 ]; then
    GPT2=(--n_layer=2 --n_head=2 --n_embd=64)
    T=64 BATCH=2 BIG_BATCH=4 DDP_ITERS=20 BPE_T=32 BPE_ITERS=10 BPE_EVAL_ITERS=1
    BENCH_ITERS=(--iters 2 --warmup 1)
    cargo build --release --bin nanogpt || exit 2
    exe=$(cargo test --release --no-run --test cuda_device 2>&1 | sed -n 's/.*Executable tests\/cuda_device.rs (\(.*\))/\1/p')
    BIN_DIR=$OUT/bin
    mkdir -p "$BIN_DIR"
    ln -sf "$PWD/target/release/nanogpt" "$BIN_DIR/nanogpt"
    ln -sf "$PWD/$exe" "$BIN_DIR/cuda_device"
fi
for f in "$BIN_DIR/nanogpt" "$BIN_DIR/cuda_device"; do
    [ -x "$f" ] || { echo "$f is missing: run benches/cuda_check.sh build on a machine with Rust, and copy $BIN_DIR here" >&2; exit 2; }
done
if [ -z "${FIXTURES:-}" ]; then
    FIXTURES=../shared/fixtures
    [ -d "$FIXTURES" ] || FIXTURES=shared/fixtures
fi
[ -d "$FIXTURES/tiny-gpt2" ] || { echo "fixtures not found at $FIXTURES: set FIXTURES" >&2; exit 2; }
export NANOGPT_FIXTURES=$(cd "$FIXTURES" && pwd)
# The test binary's own command tests run this nanogpt (its build path is not on this machine).
export NANOGPT_BIN=$(cd "$(dirname "$BIN_DIR/nanogpt")" && pwd)/nanogpt
# A missing GPU fails the tests (rather than skipping them or, in the tests' binary, running
# them on the CPU emulator of CUDA), except in a rehearsal, which is on the emulator.
[ "${REHEARSAL:-0}" = 1 ] || export NANOGPT_REQUIRE_GPU=1
# The CUDA libraries the binary loads at run time: the toolkit's, and those of pip wheels
# (site-packages/nvidia/*/lib). NVRTC should be the driver's CUDA version (see GPU.md).
libs=/usr/local/cuda/lib64
for d in $($PY -c 'import nvidia, os; r = list(nvidia.__path__)[0]; print(" ".join(os.path.join(r, x, "lib") for x in sorted(os.listdir(r)) if os.path.isdir(os.path.join(r, x, "lib"))))' 2>/dev/null); do
    libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A fresh kernel cache, so this run compiles the kernels itself (and times that).
export XDG_CACHE_HOME="$OUT/cache"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
echo "GPU: $(cat "$OUT/gpu.txt")"

# 1-4: the correctness tests, one at a time (their output holds the measured errors).
start=$(date +%s)
timeout 240 "$BIN_DIR/cuda_device" --test-threads=1 --nocapture > "$OUT/cuda_device.log" 2>&1
tests_rc=$?
echo "correctness tests: exit $tests_rc in $(( $(date +%s) - start )) s (log: $OUT/cuda_device.log)"
if [ "${REHEARSAL:-0}" = 1 ]; then
    # The emulator's libraries, which the tests just built, for the script's own runs.
    emulator=$(dirname "$(ls -t target/tmp/cuda-emulator/*/complete | head -1)")
    export LD_LIBRARY_PATH="$PWD/$emulator:$LD_LIBRARY_PATH"
fi

# Peak GPU memory of a command: nvidia-smi sampled every 100 ms while it runs.
with_memory() {
    local name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.mem" 2>/dev/null &
    local sampler=$!
    timeout 180 "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
    local rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    echo "$name: exit $rc"
}

# CHECKS picks the issues whose sections run (default "12 13 14": 5 is issue 12's, 6 issue 14's,
# 7 issue 13's); the correctness tests always run (issue 12's verdict). Device time is short: CHECKS=13 runs only the
# tests and issue 13's part.
export CHECKS=${CHECKS:-12 13 14}
want() { [[ " $CHECKS " == *" $1 "* ]]; }
peer=(benches/pytorch_train_step.py --device=cuda --json --iters 10 --warmup 3)
text=../shared/data/tinyshakespeare.txt
[ -f "$text" ] || text=shared/data/tinyshakespeare.txt

# The training benchmark of sections 5 and 7 (set outside both: CHECKS may name either alone).
bench=("$BIN_DIR/nanogpt" bench --device=cuda --json "${BENCH_ITERS[@]}" "${GPT2[@]}" --block_size=$T)

# 5: GPT-2 124M, T=1024, B=12 (nanoGPT's bench.py shape).
if want 12; then
# dtype said outright: on a GPU with bf16 tensor cores the default is bfloat16.
with_memory bench_f32 "${bench[@]}" --dtype=float32 --batch_size=$BATCH
NANOGPT_CUDA_TF32=1 with_memory bench_tf32 "${bench[@]}" --dtype=float32 --batch_size=$BATCH
with_memory peer_f32 $PY "${peer[@]}"
with_memory peer_tf32 $PY "${peer[@]}" --tf32=true
with_memory peer_bf16_compile $PY "${peer[@]}" --dtype=bfloat16 --compile=true
fi

# 6: data-parallel training (issue 14). NCCL at world size 1 (a launcher's run of one rank; each
# layer's gradient sum starts on NCCL's own stream during backward, `backward_all_reduced`)
# against no launcher: the same losses bit for bit, tokens/s within 2%. Then two CPU ranks through
# the TCP ring on this machine's cores against one process: the same logged losses.
if want 14; then
nccl_so=$(find ${libs//:/ } -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl_so" ]; then
    # cudarc looks for libnccl.so, never libnccl.so.2 (GPU.md).
    mkdir -p "$OUT/nccl-link" && ln -sf "$nccl_so" "$OUT/nccl-link/libnccl.so"
    export LD_LIBRARY_PATH="$OUT/nccl-link:$LD_LIBRARY_PATH"
fi
echo "NCCL: ${nccl_so:-not found}"
"$BIN_DIR/nanogpt" prepare shakespeare_char --data_dir="$OUT/data" --input="$text" > "$OUT/ddp_prepare.log" 2>&1
gpu_args=(train --dataset=shakespeare_char --data_dir="$OUT/data" --device=cuda "${GPT2[@]}"
    --block_size=$T --batch_size=8 --gradient_accumulation_steps=1
    --max_iters=$DDP_ITERS --lr_decay_iters=$DDP_ITERS --warmup_iters=5 --eval_interval=1000 --eval_iters=1
    --log_interval=10 --dropout=0.0 --dtype=float32)
timeout 150 "$BIN_DIR/nanogpt" "${gpu_args[@]}" --out_dir="$OUT/ddp_alone" > "$OUT/ddp_alone.log" 2>&1
echo "ddp_alone: exit $?"
timeout 150 "$BIN_DIR/nanogpt" launch --nproc_per_node=1 --master_port=29561 -- "${gpu_args[@]}" \
    --out_dir="$OUT/ddp_nccl1" > "$OUT/ddp_nccl1.log" 2>&1
echo "ddp_nccl1: exit $?"
cpu_args=(train --dataset=shakespeare_char --data_dir="$OUT/data" --device=cpu --n_layer=4
    --n_head=4 --n_embd=128 --block_size=128 --batch_size=8 --gradient_accumulation_steps=2
    --max_iters=20 --eval_interval=10 --eval_iters=2 --log_interval=1 --peak_tflops=1)
RAYON_NUM_THREADS=8 timeout 120 "$BIN_DIR/nanogpt" "${cpu_args[@]}" --out_dir="$OUT/ddp_cpu1" \
    > "$OUT/ddp_cpu1.log" 2>&1
echo "ddp_cpu1: exit $?"
timeout 120 "$BIN_DIR/nanogpt" launch --nproc_per_node=2 --master_port=29562 -- "${cpu_args[@]}" \
    --out_dir="$OUT/ddp_cpu2" > "$OUT/ddp_cpu2.log" 2>&1
echo "ddp_cpu2: exit $?"
fi

# 7: bf16 training (issue 13). The bf16 correctness test ran with 1-4 (cuda_device's
# bf16_training_is_as_close_to_f32_as_the_cpus).
if want 13; then
with_memory bench_bf16 "${bench[@]}" --dtype=bfloat16 --batch_size=$BATCH
with_memory bench_bf16_b64 "${bench[@]}" --dtype=bfloat16 --batch_size=$BIG_BATCH
# GELU as its own kernels rather than in cuBLASLt's epilogues (the default from sm_90): which is
# faster here decides that default.
NANOGPT_CUDA_GELU_EPILOGUE=0 with_memory bench_bf16_b64_gelu_kernel "${bench[@]}" --dtype=bfloat16 --batch_size=$BIG_BATCH
# float16 (f16 linear layers, f32 attention, the loss scaler): what a Volta/Turing user gets.
with_memory bench_f16 "${bench[@]}" --dtype=float16 --batch_size=$BATCH
with_memory peer_bf16_compile_b64 $PY "${peer[@]}" --dtype=bfloat16 --compile=true --batch_size=$BIG_BATCH
# Where a bf16 step's time goes (GPU time per kernel and product shape), and the kernels under
# compute-sanitizer: memcheck (out-of-bounds and misaligned accesses) and racecheck (shared
# memory read and written without a barrier between: what the CPU emulator's one-thread-at-a-time
# order cannot show).
NANOGPT_CUDA_PROFILE=1 timeout 120 "$BIN_DIR/nanogpt" bench --device=cuda --dtype=bfloat16 --json --iters 3 --warmup 1 \
    "${GPT2[@]}" --block_size=$T --batch_size=$BATCH \
    > "$OUT/bench_bf16_profile.json" 2> "$OUT/bench_bf16_profile.txt"
echo "bench_bf16_profile: exit $?"
for tool in memcheck racecheck; do
    if command -v compute-sanitizer >/dev/null; then
        timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN_DIR/cuda_device" \
            bf16_training --nocapture > "$OUT/${tool}_bf16.log" 2>&1
        echo $? > "$OUT/${tool}_bf16.rc"
        echo "${tool}_bf16: exit $(cat "$OUT/${tool}_bf16.rc")"
    else
        echo "${tool}_bf16: compute-sanitizer not found" | tee "$OUT/${tool}_bf16.log"
    fi
done
"$BIN_DIR/nanogpt" prepare shakespeare --data_dir="$OUT/data" --input="$text" > "$OUT/bpe_prepare.log" 2>&1
bpe_args=(train --dataset=shakespeare --data_dir="$OUT/data" --device=cuda "${GPT2[@]}"
    --block_size=$BPE_T --batch_size=8 --gradient_accumulation_steps=1 --max_iters=$BPE_ITERS
    --lr_decay_iters=$BPE_ITERS --warmup_iters=$((BPE_ITERS / 10)) --eval_interval=$BPE_ITERS
    --eval_iters=$BPE_EVAL_ITERS --log_interval=$((BPE_ITERS / 10))
    --dropout=0.0)
for dt in float32 bfloat16; do
    timeout 150 "$BIN_DIR/nanogpt" "${bpe_args[@]}" --dtype=$dt --out_dir="$OUT/bpe_$dt" > "$OUT/bpe_$dt.log" 2>&1
    echo "bpe_$dt: exit $?"
done
fi

$PY - "$OUT" "$tests_rc" <<'PYEOF'
import json, os, re, sys
out, tests_rc = sys.argv[1], int(sys.argv[2])
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
log = open(os.path.join(out, "cuda_device.log"), errors="replace").read()
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
    "rehearsal_on_the_cpu_emulator": os.environ.get("REHEARSAL") == "1",
    "gpu": open(os.path.join(out, "gpu.txt")).read().strip(),
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
def tail(name, n):
    try:
        return open(os.path.join(out, name), errors="replace").read().splitlines()[-n:]
    except OSError:
        return []
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
checks = os.environ.get("CHECKS", "12 13 14").split() + ["12"]
verdicts = {"12": ("issue 12 (CUDA, exact)", ok), "14": ("issue 14 (DDP device check)", ddp_ok),
            "13": ("issue 13 so far (bf16/f16 tests, bf16 accuracy, memcheck, racecheck; its speed targets are read from the table)", bf16_ok)}
for issue, (what, passed) in verdicts.items():
    print(f"RESULT {what}:", ("PASS" if passed else "FAIL") if issue in checks else "not run (CHECKS)")
all_ok = all(passed for issue, (_, passed) in verdicts.items() if issue in checks)
print("RESULT:", "PASS" if all_ok else "FAIL", "->", os.path.join(out, "cuda_check.json"))
sys.exit(0 if all_ok else 1)
PYEOF
