#!/usr/bin/env bash
# The CUDA device check (issue 12), in two halves:
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
# and dropout masks are the CPU's; (4) greedy decoding gives the CPU's ids; (5) GPT-2 124M at
# T=1024 B=12: tokens/s, ms/iter, MFU and peak GPU memory in f32 and with TF32, beside the
# PyTorch peer (benches/pytorch_train_step.py) in f32, f32+TF32 and nanoGPT's bf16 + compile.
# Environment: FIXTURES (default ../shared/fixtures, else shared/fixtures), BIN_DIR (default
# target/cuda-check), PYTHON (default python3).
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
for f in "$BIN_DIR/nanogpt" "$BIN_DIR/cuda_device"; do
    [ -x "$f" ] || { echo "$f is missing: run benches/cuda_check.sh build on a machine with Rust, and copy $BIN_DIR here" >&2; exit 2; }
done
if [ -z "${FIXTURES:-}" ]; then
    FIXTURES=../shared/fixtures
    [ -d "$FIXTURES" ] || FIXTURES=shared/fixtures
fi
[ -d "$FIXTURES/tiny-gpt2" ] || { echo "fixtures not found at $FIXTURES: set FIXTURES" >&2; exit 2; }
export NANOGPT_FIXTURES=$(cd "$FIXTURES" && pwd)
export NANOGPT_REQUIRE_GPU=1
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

# 5: GPT-2 124M, T=1024, B=12 (nanoGPT's bench.py shape).
with_memory bench_f32 "$BIN_DIR/nanogpt" bench --device=cuda --json --iters 10 --warmup 3
NANOGPT_CUDA_TF32=1 with_memory bench_tf32 "$BIN_DIR/nanogpt" bench --device=cuda --json --iters 10 --warmup 3
peer=(benches/pytorch_train_step.py --device=cuda --json --iters 10 --warmup 3)
with_memory peer_f32 $PY "${peer[@]}"
with_memory peer_tf32 $PY "${peer[@]}" --tf32=true
with_memory peer_bf16_compile $PY "${peer[@]}" --dtype=bfloat16 --compile=true

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
tests = {m.group(1): m.group(2) for m in re.finditer(r"^test (\S+) \.\.\. (\w+)", log, re.M)}
measured = [l for l in log.splitlines() if re.search(r"rel|losses|greedy|cuda .* cpu", l)]
summary = {
    "gpu": open(os.path.join(out, "gpu.txt")).read().strip(),
    "tests_exit": tests_rc,
    "tests": tests,
    "measured": measured,
    "bench": {n: load(n) for n in ["bench_f32", "bench_tf32", "peer_f32", "peer_tf32", "peer_bf16_compile"]},
}
json.dump(summary, open(os.path.join(out, "cuda_check.json"), "w"), indent=2)
print("\n== cuda_check summary ==")
print("GPU:", summary["gpu"])
for name, status in tests.items():
    print(f"  {status:>6}  {name}")
for line in measured:
    print("   ", line)
print(f"{'run':<20}{'ms/iter':>10}{'tokens/s':>12}{'MFU':>8}{'peak GPU MiB':>14}")
for name, b in summary["bench"].items():
    r = b["result"] or {}
    mfu = r.get("mfu")
    print(f"{name:<20}{r.get('ms_per_iter', float('nan')):>10.1f}{r.get('tokens_per_s', float('nan')):>12.0f}"
          f"{(f'{100 * mfu:.1f}%' if mfu is not None else '-'):>8}{b['peak_gpu_mib_nvidia_smi'] or float('nan'):>14.0f}")
ok = tests_rc == 0 and tests and all(s == "ok" for s in tests.values())
print("RESULT:", "PASS" if ok else "FAIL", "->", os.path.join(out, "cuda_check.json"))
sys.exit(0 if ok else 1)
PYEOF
