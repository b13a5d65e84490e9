#!/usr/bin/env bash
# Side-by-side serving benchmark: nanogpt serve against llama.cpp's llama-server, same model
# (GPT-2 124M, f32), same threads, same concurrency.
#
# Usage: benches/serve_bench.sh NANOGPT_BIN MODEL_DIR GGUF LLAMA_SERVER [OUT.json]
#
#   NANOGPT_BIN   target/release/nanogpt
#   MODEL_DIR     Hugging Face directory of the model (benches/serve_bench_model.py makes one)
#   GGUF          the same model as GGUF f32 (llama.cpp's convert_hf_to_gguf.py --outtype f32)
#   LLAMA_SERVER  llama.cpp's llama-server binary (CPU build)
#   OUT.json      combined results (default: serve_bench_results.json)
#
# For each C in $CLIENTS the two servers run one after the other (the order alternates from one C
# to the next): start the server with C slots, wait for GET /health 200, run benches/serve_bench.py
# with C concurrent clients, stop the server. Then a side-by-side table with ours / llama-server.
#
# Environment: CLIENTS ("1 2 4 8"), MAX_TOKENS (128), REQUESTS (2 per client), WARMUP (1),
# THREADS (2), CTX_PER_SLOT (1024), PORT (18080), PYTHON (python3), LOG_DIR (a temp dir),
# LLAMA_EXTRA (extra flags for llama-server, none by default), OURS_EXTRA (extra flags for nanogpt
# serve; default "--device cpu", OURS_EXTRA= for none).
#
# Fairness: llama-server runs with --no-cache-prompt and --cache-ram 0. Every request sends the
# same prompt, so with its default prompt cache a slot would keep the prompt's KV from the previous
# request and skip the prefill (TTFT would then measure no prefill at all). Continuous batching is
# on by default in llama-server (as in ours); -b/-ub (2048/512) only matter for prompts longer than
# ours; its worker threads busy-wait for work by default (--poll 50), left as is. llama-server
# splits -c between its -np slots (no unified KV when -np is given): -c = C * CTX_PER_SLOT.
# The load generator runs on the same machine and takes some CPU from both servers alike.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
NANOGPT_BIN=$1
MODEL_DIR=$2
GGUF=$3
LLAMA_SERVER=$4
OUT=${5:-serve_bench_results.json}

CLIENTS=${CLIENTS:-"1 2 4 8"}
MAX_TOKENS=${MAX_TOKENS:-128}
REQUESTS=${REQUESTS:-2}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-2}
CTX_PER_SLOT=${CTX_PER_SLOT:-1024}
PORT=${PORT:-18080}
PYTHON=${PYTHON:-python3}
LLAMA_EXTRA=${LLAMA_EXTRA:-}
OURS_EXTRA=${OURS_EXTRA---device cpu}  # CPU against CPU: llama-server is a CPU-only build
HERE=$(cd "$(dirname "$0")" && pwd)
LOG_DIR=${LOG_DIR:-$(mktemp -d -t serve_bench.XXXXXX)}
mkdir -p "$LOG_DIR"

for f in "$NANOGPT_BIN" "$LLAMA_SERVER"; do
    [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }
done
[ -d "$MODEL_DIR" ] || { echo "not a directory: $MODEL_DIR" >&2; exit 2; }
[ -f "$GGUF" ] || { echo "not a file: $GGUF" >&2; exit 2; }

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT INT TERM

wait_health() {  # wait_health LOG: until GET /health answers 200, the server dies, or 300 s pass
    local log=$1
    for _ in $(seq 1 600); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited before it was ready; its log ($log):" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        if "$PYTHON" - "$PORT" <<'EOF' 2>/dev/null
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/health")
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
        then
            return 0
        fi
        sleep 0.5
    done
    echo "server not ready after 300 s; its log ($log):" >&2
    tail -n 30 "$log" >&2
    return 1
}

run_one() {  # run_one NAME C
    local name=$1 c=$2 log="$LOG_DIR/$1-c$2.log" json="$LOG_DIR/$1-c$2.json"
    case $name in
        llama)
            # shellcheck disable=SC2086
            "$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np "$c" \
                -c $((c * CTX_PER_SLOT)) --host 127.0.0.1 --port "$PORT" \
                --no-cache-prompt --cache-ram 0 $LLAMA_EXTRA >"$log" 2>&1 &
            ;;
        ours)
            # shellcheck disable=SC2086
            "$NANOGPT_BIN" serve --init_from="$MODEL_DIR" --threads "$THREADS" --parallel "$c" \
                --host 127.0.0.1 --port "$PORT" $OURS_EXTRA >"$log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    if ! wait_health "$log"; then
        stop_server
        return 1
    fi
    echo "== $name, C=$c (server log: $log)"
    local rc=0
    "$PYTHON" "$HERE/serve_bench.py" --url "http://127.0.0.1:$PORT" --clients "$c" \
        --max_tokens "$MAX_TOKENS" --requests "$REQUESTS" --warmup "$WARMUP" \
        --label "$name" --json "$json" || rc=$?
    stop_server
    return $rc
}

status=0
i=0
for c in $CLIENTS; do
    if [ $((i % 2)) -eq 0 ]; then order="llama ours"; else order="ours llama"; fi
    for name in $order; do
        run_one "$name" "$c" || status=1
    done
    i=$((i + 1))
done

"$PYTHON" - "$LOG_DIR" "$OUT" "$CLIENTS" "$THREADS" "$MAX_TOKENS" "$REQUESTS" <<'EOF'
import json, os, sys, time
log_dir, out, clients, threads, max_tokens, requests = sys.argv[1:7]
clients = [int(c) for c in clients.split()]
res = {"llama": {}, "ours": {}}
for name in res:
    for c in clients:
        p = os.path.join(log_dir, f"{name}-c{c}.json")
        if os.path.exists(p):
            with open(p) as f:
                d = json.load(f)
            res[name][c] = d["results"][0]
            res[name][c]["prompt_tokens"] = d.get("prompt_tokens")

def g(name, c, key):
    r = res[name].get(c)
    return r.get(key) if r else None

def ratio(a, b):
    return a / b if a is not None and b else None

def f(x, spec):
    return format(x, spec) if x is not None else "-"

print(f"\nthreads {threads}, max_tokens {max_tokens}, {requests} requests per client; "
      "ratio = ours / llama-server (tok/s: higher is better for ours; TTFT: lower is better)")
print(f"{'C':>3} | {'stream tok/s':^23} | {'TTFT ms (median)':^23} | {'total tok/s':^23}")
print(f"{'':>3} | {'ours':>7} {'llama':>7} {'ratio':>7} | {'ours':>7} {'llama':>7} {'ratio':>7} "
      f"| {'ours':>7} {'llama':>7} {'ratio':>7}")
rows = []
for c in clients:
    so, sl = g("ours", c, "stream_tok_s_median"), g("llama", c, "stream_tok_s_median")
    to, tl = g("ours", c, "ttft_s_median"), g("llama", c, "ttft_s_median")
    to = to * 1000 if to is not None else None
    tl = tl * 1000 if tl is not None else None
    ao, al = g("ours", c, "total_tok_s"), g("llama", c, "total_tok_s")
    print(f"{c:>3} | {f(so, '7.2f')} {f(sl, '7.2f')} {f(ratio(so, sl), '7.3f')} "
          f"| {f(to, '7.1f')} {f(tl, '7.1f')} {f(ratio(to, tl), '7.3f')} "
          f"| {f(ao, '7.2f')} {f(al, '7.2f')} {f(ratio(ao, al), '7.3f')}")
    rows.append({"clients": c,
                 "stream_tok_s": {"ours": so, "llama": sl, "ratio": ratio(so, sl)},
                 "ttft_ms": {"ours": to, "llama": tl, "ratio": ratio(to, tl)},
                 "total_tok_s": {"ours": ao, "llama": al, "ratio": ratio(ao, al)}})
with open(out, "w") as fh:
    json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "threads": int(threads), "max_tokens": int(max_tokens),
               "requests_per_client": int(requests), "summary": rows,
               "ours": res["ours"], "llama": res["llama"]}, fh, indent=1)
print(f"\nwrote {out} (per-server runs and logs in {log_dir})")
EOF
exit $status
