#!/usr/bin/env bash
# Decode speed of Llama models, single sequence, greedy from BOS, side by side with llama2.c's
# run (f32) and runq (int8, Q8_0), 2 threads each, alternating per round:
#
#   benches/llama_vs_run_c.sh NANOGPT PEERS_DIR MODELS_DIR [ROUNDS] [STEPS]
#
# NANOGPT: a release build; PEERS_DIR: ../shared/peers/llama2c (run, runq); MODELS_DIR: made by
# `python3 benches/llama_bench_models.py MODELS_DIR` (random15M/42M/110M .v0.bin and .v2.bin,
# tok32000.bin). stories260K.bin runs with ../shared/fixtures/llama's tok512.bin.
# Both programs print run.c's "achieved tok/s" (the steps after the first over their time); the
# same model file, the same greedy tokens (both stop at BOS, which random models never pick).
# On the v2 (Q8_0) files ("(runq)" rows) nanogpt computes in int8 as runq does (--sampler=run_c's
# default for a v2 file: int8 weights and activations, groups of the file's size; see
# src/kernels/cpu/q8.rs). Where a matrix's rows are not a multiple of the file's group (15M's 288,
# 42M's 1376 with group 64), runq lets its groups run across rows and skips each row's last
# partial group; nanogpt quantizes those matrices with the largest group dividing both (32).
set -euo pipefail
NANOGPT=$1 PEERS=$2 MODELS=$3 ROUNDS=${4:-3} STEPS=${5:-256}
FIX=$(cd "$(dirname "$0")/../../shared/fixtures/llama" && pwd)
export OMP_NUM_THREADS=2

speed() { grep -o 'achieved tok/s: [0-9.]*' | awk '{print $3}'; }
ours() { # model tokenizer
    "$NANOGPT" --threads=2 sample --init_from="$1" --tokenizer="$2" --sampler=run_c --start= \
        --num_samples=1 --max_new_tokens="$STEPS" --temperature=0 2>&1 >/dev/null | speed
}
theirs() { # program model tokenizer
    "$PEERS/$1" "$2" -z "$3" -t 0 -n "$STEPS" 2>&1 >/dev/null | speed
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '| model | file | ours tok/s | %s tok/s | ratio |\n|---|---|---|---|---|\n' "llama2.c"
for spec in "stories260K:$FIX/stories260K.bin:$FIX/tok512.bin:run" \
    "15M:$MODELS/random15M.v0.bin:$MODELS/tok32000.bin:run" \
    "15M:$MODELS/random15M.v2.bin:$MODELS/tok32000.bin:runq" \
    "42M:$MODELS/random42M.v0.bin:$MODELS/tok32000.bin:run" \
    "42M:$MODELS/random42M.v2.bin:$MODELS/tok32000.bin:runq" \
    "110M:$MODELS/random110M.v0.bin:$MODELS/tok32000.bin:run" \
    "110M:$MODELS/random110M.v2.bin:$MODELS/tok32000.bin:runq"; do
    IFS=: read -r name model tok peer <<<"$spec"
    [ -f "$model" ] || continue
    a=() b=()
    for _ in $(seq "$ROUNDS"); do
        a+=("$(ours "$model" "$tok")")
        b+=("$(theirs "$peer" "$model" "$tok")")
    done
    ma=$(printf '%s\n' "${a[@]}" | median) mb=$(printf '%s\n' "${b[@]}" | median)
    printf '| %s | %s (%s) | %.1f (%s) | %.1f (%s) | %.2f |\n' "$name" "$(basename "$model")" "$peer" \
        "$ma" "${a[*]}" "$mb" "${b[*]}" "$(echo "$ma / $mb" | bc -l)"
done
