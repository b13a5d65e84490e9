#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible completions server (nanogpt serve, llama-server, ...).

Python 3.11 standard library only (threading + http.client).

For each C in --clients, C client threads each send one warm-up request, wait for one another, then
send --requests streaming `POST /v1/completions` requests back to back (fixed prompt, `max_tokens`,
greedy with a seed, `ignore_eos`, `stream_options.include_usage`). Per stream it records the time to
the first chunk with non-empty text (TTFT) and the number of generated tokens (the usage chunk's
`completion_tokens` when the server sends one, else the number of chunks with text).

Per C it reports:
  - stream tok/s: median over streams of (tokens - 1) / (time of the last text chunk - TTFT),
    the decode rate one client sees (prefill excluded);
  - e2e tok/s: median over streams of tokens / (request start to end of stream);
  - TTFT: median (and max) over streams;
  - total tok/s: all generated tokens of the measured requests / wall time of the C-client phase
    (from the moment all clients finished their warm-up to the end of the last stream).

Example:
  python3 benches/serve_bench.py --url http://127.0.0.1:8080 --clients 1,2,4,8 --max_tokens 128 \
      --requests 2 --json out.json
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

# About 32 GPT-2 tokens of ordinary English.
DEFAULT_PROMPT = (
    "The old lighthouse keeper climbed the winding stairs every evening at dusk, carrying a small "
    "lantern and a notebook in which he wrote down the weather and the passing ships."
)


def parse_url(url):
    u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if u.scheme != "http":
        raise SystemExit(f"only http:// URLs are supported, got {url!r}")
    return u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")


class Client:
    def __init__(self, host, port, base, timeout, api_key=None):
        self.host, self.port, self.base, self.timeout = host, port, base, timeout
        self.api_key = api_key
        self.conn = None

    def _connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request_json(self, method, path, body=None):
        conn = self._connect()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, self.base + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except Exception:
            self.close()
            raise
        return resp.status, raw

    def stream_completion(self, body):
        """Send one streaming completions request; return a dict of timings and counts.

        Each request opens its own connection (a TCP connect on localhost costs well under a
        millisecond): servers differ in how long they keep an idle connection (llama-server: 5 s),
        and a client waiting at the barrier would find its kept-alive connection closed.
        """
        self.close()
        conn = self._connect()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        t_first_chunk = t_first_text = t_last_text = None
        text_chunks = 0
        usage_tokens = None
        finish_reason = None
        text_parts = []
        server_timings = None
        try:
            conn.request("POST", self.base + "/v1/completions", body=data, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raw = resp.read()
                raise RuntimeError(f"HTTP {resp.status}: {raw[:500]!r}")
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, event: lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    resp.read()  # the end of the chunked body, so the server sees a clean close
                    break
                now = time.perf_counter()
                if t_first_chunk is None:
                    t_first_chunk = now
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise RuntimeError(f"error in stream: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content")
                    if text:
                        text_chunks += 1
                        text_parts.append(text)
                        if t_first_text is None:
                            t_first_text = now
                        t_last_text = now
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                if chunk.get("timings"):  # llama-server extension
                    server_timings = chunk["timings"]
        finally:
            self.close()
        t_end = time.perf_counter()
        tokens = usage_tokens if usage_tokens is not None else text_chunks
        ttft = (t_first_text - t0) if t_first_text is not None else None
        decode_s = (t_last_text - t_first_text) if t_first_text is not None else None
        return {
            "start": t0,
            "end": t_end,
            "ttft_s": ttft,
            "first_chunk_s": (t_first_chunk - t0) if t_first_chunk is not None else None,
            "total_s": t_end - t0,
            "decode_s": decode_s,
            "tokens": tokens,
            "tokens_from_usage": usage_tokens is not None,
            "text_chunks": text_chunks,
            "finish_reason": finish_reason,
            "chars": sum(len(t) for t in text_parts),
            "server_timings": server_timings,
        }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_phase(args, host, port, base, n_clients):
    body = {
        "model": args.model,
        "prompt": args.prompt,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    barrier = threading.Barrier(n_clients + 1)
    results = [[] for _ in range(n_clients)]
    errors = []
    lock = threading.Lock()

    def worker(i):
        cl = Client(host, port, base, args.timeout, args.api_key)
        try:
            for _ in range(args.warmup):
                cl.stream_completion(body)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"client {i} warm-up: {e}")
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            for _ in range(args.requests):
                results[i].append(cl.stream_completion(body))
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"client {i}: {e}")
        finally:
            cl.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()  # every client has finished its warm-up
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    t_end = time.perf_counter()
    load_after = os.getloadavg()[0]
    streams = [r for rs in results for r in rs]
    wall = t_end - t_start
    total_tokens = sum(r["tokens"] for r in streams)
    stream_rates = [
        (r["tokens"] - 1) / r["decode_s"] for r in streams if r["decode_s"] and r["tokens"] > 1
    ]
    e2e_rates = [r["tokens"] / r["total_s"] for r in streams if r["total_s"] > 0]
    ttfts = [r["ttft_s"] for r in streams if r["ttft_s"] is not None]
    short = [r for r in streams if r["tokens"] != args.max_tokens]
    summary = {
        "clients": n_clients,
        "streams": len(streams),
        "errors": errors,
        "wall_s": wall,
        "total_tokens": total_tokens,
        "total_tok_s": total_tokens / wall if wall > 0 else None,
        "stream_tok_s_median": median(stream_rates),
        "e2e_tok_s_median": median(e2e_rates),
        "ttft_s_median": median(ttfts),
        "ttft_s_max": max(ttfts) if ttfts else None,
        "tokens_from_usage": all(r["tokens_from_usage"] for r in streams) if streams else None,
        "streams_short_of_max_tokens": len(short),
        # 1-minute load average before and after the measured phase: a figure taken while other
        # work ran on the machine shows a load well above the server's thread count.
        "loadavg_1m": [load_before, load_after],
        "stream_details": [
            {k: v for k, v in r.items() if k not in ("start", "end")} for r in streams
        ],
    }
    return summary


def fmt(x, spec):
    if x is not None:
        return format(x, spec)
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return "-".rjust(int(width)) if width else "-"


def print_table(label, rows, out=sys.stdout):
    print(f"\n{label}", file=out)
    print(f"{'C':>3} {'streams':>7} {'stream tok/s':>12} {'e2e tok/s':>10} {'TTFT ms':>9} "
          f"{'TTFT max':>9} {'total tok/s':>11} {'tokens':>7} {'wall s':>7}", file=out)
    for r in rows:
        ttft = r["ttft_s_median"] * 1000 if r["ttft_s_median"] is not None else None
        ttft_max = r["ttft_s_max"] * 1000 if r["ttft_s_max"] is not None else None
        print(f"{r['clients']:>3} {r['streams']:>7} {fmt(r['stream_tok_s_median'], '12.2f')} "
              f"{fmt(r['e2e_tok_s_median'], '10.2f')} {fmt(ttft, '9.1f')} {fmt(ttft_max, '9.1f')} "
              f"{fmt(r['total_tok_s'], '11.2f')} {r['total_tokens']:>7} {r['wall_s']:>7.2f}",
              file=out)
        for e in r["errors"]:
            print(f"    error: {e}", file=out)
        if r["streams_short_of_max_tokens"]:
            print(f"    note: {r['streams_short_of_max_tokens']} stream(s) produced a token count "
                  f"other than max_tokens", file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080",
                    help="server base URL (without /v1)")
    ap.add_argument("--clients", default="1,2,4,8", help="comma-separated concurrency levels")
    ap.add_argument("--max_tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=2,
                    help="measured requests per client (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up requests per client")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--model", default="bench")
    ap.add_argument("--api_key", default=None)
    ap.add_argument("--timeout", type=float, default=600.0, help="socket timeout, seconds")
    ap.add_argument("--label", default=None, help="a name for this server in the output")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args()

    host, port, base = parse_url(args.url)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]

    # Prompt length, when the server has llama-server's /tokenize (nanogpt serve has it too).
    prompt_tokens = None
    try:
        st, raw = Client(host, port, base, 30).request_json("POST", "/tokenize",
                                                            {"content": args.prompt})
        if st == 200:
            prompt_tokens = len(json.loads(raw).get("tokens", []))
    except Exception:  # noqa: BLE001
        pass

    label = args.label or args.url
    print(f"# {label}: prompt {prompt_tokens if prompt_tokens is not None else '?'} tokens, "
          f"max_tokens {args.max_tokens}, {args.warmup} warm-up + {args.requests} requests "
          f"per client", flush=True)
    rows = []
    for c in clients:
        r = run_phase(args, host, port, base, c)
        rows.append(r)
        print(f"C={c}: stream {fmt(r['stream_tok_s_median'], '.2f')} tok/s, TTFT "
              f"{fmt(r['ttft_s_median'] and r['ttft_s_median'] * 1000, '.1f')} ms, total "
              f"{fmt(r['total_tok_s'], '.2f')} tok/s, {len(r['errors'])} error(s), load "
              f"{r['loadavg_1m'][0]:.1f}->{r['loadavg_1m'][1]:.1f}", flush=True)
    print_table(label, rows)

    if args.json:
        out = {
            "label": label,
            "url": args.url,
            "prompt": args.prompt,
            "prompt_tokens": prompt_tokens,
            "max_tokens": args.max_tokens,
            "requests_per_client": args.requests,
            "warmup_per_client": args.warmup,
            "temperature": args.temperature,
            "seed": args.seed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
