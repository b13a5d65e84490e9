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
# target/cuda-check), PYTHON (default python3), CHECKS (which issues' sections run, see below),
# DEADLINE (seconds the whole run may take, default 540: the device tool stops a command at 600,
# and a run cut off prints no summary; each step's time limit is cut to what is left, a step with
# under 10 s left is skipped and says so in its log, and the summary always runs).
#
#   benches/cuda_check.sh summary RESULTS_DIR   prints the summary again from a results folder,
#       for instance one fetched from a run that was stopped before it got there.
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

PY=${PYTHON:-python3}
if [ "${1:-}" = summary ] && [ $# -eq 2 ]; then
    exec $PY benches/cuda_check_summary.py "$2"
fi
[ $# -eq 1 ] || { echo "usage: benches/cuda_check.sh build | summary RESULTS_DIR | RESULTS_DIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
# The models: GPT-2 124M's width and depth, the benchmark's context and batches, the runs' lengths.
GPT2=(--n_layer=12 --n_head=12 --n_embd=768)
T=1024 BATCH=12 BIG_BATCH=64 DDP_ITERS=40 BPE_T=256 BPE_ITERS=200 BPE_EVAL_ITERS=20
BENCH_ITERS=(--iters 10 --warmup 3)
if [ "${REHEARSAL:-0}" = 1 ]; then
    : "${DEADLINE:=3600}"
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
: "${DEADLINE:=540}"
started=$(date +%s)
# `timed CAP COMMAND...`: COMMAND under `timeout`, limited to CAP seconds and to what DEADLINE
# leaves (less 20 s for the summary); skipped, saying so on stderr, when under 10 s are left.
timed() {
    local cap=$1; shift
    local left=$(( DEADLINE - 20 - ($(date +%s) - started) ))
    (( left < cap )) && cap=$left
    if (( cap < 10 )); then
        echo "skipped: DEADLINE=$DEADLINE s reached before this step" >&2
        return 124
    fi
    timeout "$cap" "$@"
}
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

# CHECKS picks the issues whose sections run (default "12 13 14": 5 is issue 12's, 6 issue 14's,
# 7 issue 13's); the correctness tests always run (issue 12's verdict). Device time is short: CHECKS=13 runs only the
# tests and issue 13's part.
export CHECKS=${CHECKS:-12 13 14}
want() { [[ " $CHECKS " == *" $1 "* ]]; }

# 1-4: the correctness tests, one at a time (their output holds the measured errors).
start=$(date +%s)
timed 240 "$BIN_DIR/cuda_device" --test-threads=1 --nocapture > "$OUT/cuda_device.log" 2>&1
tests_rc=$?
echo "correctness tests: exit $tests_rc in $(( $(date +%s) - start )) s (log: $OUT/cuda_device.log)"
# What the summary needs besides the logs, so `summary RESULTS_DIR` can redo it from the folder.
printf '{"tests_exit": %d, "rehearsal": %s, "checks": "%s"}\n' "$tests_rc" \
    "$([ "${REHEARSAL:-0}" = 1 ] && echo true || echo false)" "$CHECKS" > "$OUT/run.json"
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
    timed 180 "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
    local rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    echo "$name: exit $rc"
}

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
timed 150 "$BIN_DIR/nanogpt" "${gpu_args[@]}" --out_dir="$OUT/ddp_alone" > "$OUT/ddp_alone.log" 2>&1
echo "ddp_alone: exit $?"
timed 150 "$BIN_DIR/nanogpt" launch --nproc_per_node=1 --master_port=29561 -- "${gpu_args[@]}" \
    --out_dir="$OUT/ddp_nccl1" > "$OUT/ddp_nccl1.log" 2>&1
echo "ddp_nccl1: exit $?"
cpu_args=(train --dataset=shakespeare_char --data_dir="$OUT/data" --device=cpu --n_layer=4
    --n_head=4 --n_embd=128 --block_size=128 --batch_size=8 --gradient_accumulation_steps=2
    --max_iters=20 --eval_interval=10 --eval_iters=2 --log_interval=1 --peak_tflops=1)
RAYON_NUM_THREADS=8 timed 120 "$BIN_DIR/nanogpt" "${cpu_args[@]}" --out_dir="$OUT/ddp_cpu1" \
    > "$OUT/ddp_cpu1.log" 2>&1
echo "ddp_cpu1: exit $?"
timed 120 "$BIN_DIR/nanogpt" launch --nproc_per_node=2 --master_port=29562 -- "${cpu_args[@]}" \
    --out_dir="$OUT/ddp_cpu2" > "$OUT/ddp_cpu2.log" 2>&1
echo "ddp_cpu2: exit $?"
fi

# 7: bf16 training (issue 13). The bf16 correctness test ran with 1-4 (cuda_device's
# bf16_training_is_as_close_to_f32_as_the_cpus).
if want 13; then
# In the order of what the issue must show, so that a short DEADLINE drops the extras: the speed
# target at B=64 beside the peer, the 200-step accuracy run, the sanitizers; then the extras.
with_memory bench_bf16_b64 "${bench[@]}" --dtype=bfloat16 --batch_size=$BIG_BATCH
with_memory peer_bf16_compile_b64 $PY "${peer[@]}" --dtype=bfloat16 --compile=true --batch_size=$BIG_BATCH
"$BIN_DIR/nanogpt" prepare shakespeare --data_dir="$OUT/data" --input="$text" > "$OUT/bpe_prepare.log" 2>&1
bpe_args=(train --dataset=shakespeare --data_dir="$OUT/data" --device=cuda "${GPT2[@]}"
    --block_size=$BPE_T --batch_size=8 --gradient_accumulation_steps=1 --max_iters=$BPE_ITERS
    --lr_decay_iters=$BPE_ITERS --warmup_iters=$((BPE_ITERS / 10)) --eval_interval=$BPE_ITERS
    --eval_iters=$BPE_EVAL_ITERS --log_interval=$((BPE_ITERS / 10))
    --dropout=0.0)
for dt in float32 bfloat16; do
    timed 150 "$BIN_DIR/nanogpt" "${bpe_args[@]}" --dtype=$dt --out_dir="$OUT/bpe_$dt" > "$OUT/bpe_$dt.log" 2>&1
    echo "bpe_$dt: exit $?"
done
# Where a bf16 step's time goes (GPU time per kernel and product shape): what the next speed work
# reads.
NANOGPT_CUDA_PROFILE=1 timed 120 "$BIN_DIR/nanogpt" bench --device=cuda --dtype=bfloat16 --json --iters 3 --warmup 1 \
    "${GPT2[@]}" --block_size=$T --batch_size=$BATCH \
    > "$OUT/bench_bf16_profile.json" 2> "$OUT/bench_bf16_profile.txt"
echo "bench_bf16_profile: exit $?"
# The kernels under compute-sanitizer: memcheck (out-of-bounds and misaligned accesses) and
# racecheck (shared memory read and written without a barrier between: what the CPU emulator's
# one-thread-at-a-time order cannot show).
for tool in memcheck racecheck; do
    if command -v compute-sanitizer >/dev/null; then
        timed 240 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN_DIR/cuda_device" \
            bf16_training --nocapture > "$OUT/${tool}_bf16.log" 2>&1
        echo $? > "$OUT/${tool}_bf16.rc"
        echo "${tool}_bf16: exit $(cat "$OUT/${tool}_bf16.rc")"
    else
        echo "${tool}_bf16: compute-sanitizer not found" | tee "$OUT/${tool}_bf16.log"
    fi
done
# GELU as its own kernels rather than in cuBLASLt's epilogues (the default from sm_90): which is
# faster here decides that default.
NANOGPT_CUDA_GELU_EPILOGUE=0 with_memory bench_bf16_b64_gelu_kernel "${bench[@]}" --dtype=bfloat16 --batch_size=$BIG_BATCH
with_memory bench_bf16 "${bench[@]}" --dtype=bfloat16 --batch_size=$BATCH
# float16 (f16 linear layers, f32 attention, the loss scaler): what a Volta/Turing user gets.
with_memory bench_f16 "${bench[@]}" --dtype=float16 --batch_size=$BATCH
fi

exec $PY benches/cuda_check_summary.py "$OUT"
