#!/usr/bin/env bash
# Batch-1 f32 decoding, side by side with llama.cpp's llama-bench on the same weights, rounds
# alternating the two: tokens/s of the decoding steps alone (the prompt pass left out, as
# llama-bench's tg), at depth ~16 (tg128) and at depth 512 and 900 (tg32 @ dN), and prompt
# processing of 512 tokens (pp512).
#
# Usage: benches/decode_vs_llama.sh NANOGPT_BIN GGUF LLAMA_BENCH [ROUNDS]
#   GGUF: GPT-2 124M as GGUF f32 (benches/serve_bench_model.py, then llama.cpp's
#   convert_hf_to_gguf.py --outtype f32); ours uses random weights of the same shape (decoding
#   cost does not depend on the values). Threads: 2 on both sides (THREADS=...).
#   DTYPE=int8 times ours with Q8_0 weights (`bench --dtype=int8`): give a q8_0 GGUF
#   (convert_hf_to_gguf.py --outtype q8_0) for the llama.cpp side; DTYPE=bfloat16 with bf16
#   weights: give an f16 GGUF (--outtype f16), the same bytes per weight.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
NANOGPT=$1; GGUF=$2; LLAMA_BENCH=$3; ROUNDS=${4:-3}; THREADS=${THREADS:-2}; DTYPE=${DTYPE:-float32}
ours() { # prompt_len new -> "decode_tok_s prompt_tok_s"
    "$NANOGPT" --threads "$THREADS" bench --generate --batch_size=1 --prompt_len="$1" \
        --max_new_tokens="$2" --dtype="$DTYPE" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["decode_tokens_per_s"], r["prompt_len"]*1e3/r["prompt_ms"])'
}
llama() { # llama-bench args -> tokens/s
    "$LLAMA_BENCH" -m "$GGUF" -t "$THREADS" -o json "$@" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}
printf '%-6s %-22s %10s %10s\n' round work nanogpt llama.cpp
for r in $(seq "$ROUNDS"); do
    read -r d16 _ < <(ours 16 128);  l16=$(llama -p 0 -n 128)
    read -r d512 _ < <(ours 512 32); l512=$(llama -p 0 -n 32 -d 512)
    read -r d900 _ < <(ours 900 32); l900=$(llama -p 0 -n 32 -d 900)
    read -r _ pp < <(ours 512 2);    lpp=$(llama -p 512 -n 0)
    printf '%-6s %-22s %10.1f %10.1f\n' "$r" "decode, depth ~16" "$d16" "$l16" "$r" "decode, depth 512" "$d512" "$l512" \
        "$r" "decode, depth 900" "$d900" "$l900" "$r" "prompt 512 (tok/s)" "$pp" "$lpp"
done
