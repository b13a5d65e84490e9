#!/bin/bash
# A/B of two nanogpt binaries on `bench --generate` (GPT-2 124M shape, batch 1, prompt 16, 128 new
# tokens): ms/token of each, the ratio of medians and the median of per-round ratios.
# The order of the two is swapped every round: on a small VM the first run of a round has an edge
# (the same binary against itself in a fixed order reads 0.98-0.99), which once passed for a 5%
# regression. Run it alone on the machine.
#   benches/ab_generate.sh OLD_BINARY NEW_BINARY [ROUNDS=10]
set -euo pipefail
A=$1; B=$2; N=${3:-10}
ARGS="bench --generate --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50257 --bias=true
  --batch_size=1 --block_size=1024 --prompt_len=16 --max_new_tokens=128 --iters=5 --warmup=1 --json"
ms() { "$1" $ARGS | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms_per_token"])'; }
for i in $(seq "$N"); do
  if [ $((i % 2)) = 1 ]; then a=$(ms "$A"); b=$(ms "$B"); else b=$(ms "$B"); a=$(ms "$A"); fi
  echo "$a $b"
done | python3 -c '
import sys, statistics as s
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
a, b = [r[0] for r in rows], [r[1] for r in rows]
print("A %.2f ms/token, B %.2f ms/token (medians); B/A %.3f, median of per-round B/A %.3f, %d rounds"
      % (s.median(a), s.median(b), s.median(b) / s.median(a), s.median([y / x for x, y in rows]), len(rows)))'
