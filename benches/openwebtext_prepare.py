"""`nanogpt prepare openwebtext` against Python tiktoken, on the same documents, end to end.

Builds a dataset of --mb megabytes of text as parquet shards (snappy, as the hub's files) in the
Hugging Face hub's layout and serves it from a local HTTP hub. There is no web text on this
machine (and no way to download it), so the documents are either (--corpus shakespeare) ~5 KB
(OpenWebText's mean) of tiny Shakespeare paragraphs drawn at random: documents never repeat
but the vocabulary is small (1 MB of source text), which flatters any tokenizer that remembers
words, as ours does; or (--corpus DIR,DIR) every text file under those folders, e.g. Python's
library and site-packages (~200 MB of code, docstrings and READMEs: a large vocabulary). Then:

1. tiktoken: each shard's texts are read with pyarrow (not timed) and `encode_ordinary_batch`
   with --threads threads is timed; MB/s = text bytes / encode seconds. This is only the
   tokenizer, nothing else of nanoGPT's prepare.py (no download, no dataset conversion, no
   writes), so it flatters Python.
2. ours from the hub: `nanogpt prepare openwebtext --num_proc THREADS` with HF_ENDPOINT at the
   local hub, timed as a process: download, checksums, parquet decoding, tokenizing, writing,
   syncing. Its disk use is sampled every 50 ms (peak extra disk = the most bytes its download/
   folder held at once) and its peak RSS comes from /usr/bin/time.
3. ours from local files (`--input`): the same without HTTP.

MB are 10^6 bytes of UTF-8 text. Token counts of ours and tiktoken are checked to agree (plus
one end-of-text token per document). Needs pyarrow and tiktoken in the Python running this
(e.g. ~/pyref/bin/python), and a release build of nanogpt:

    cargo build --release
    ~/pyref/bin/python benches/openwebtext_prepare.py --mb 1000 --threads 2
"""

import argparse
import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenize_throughput import SHAKESPEARE, gpt2_encoding  # noqa: E402

REPO = "bench/webtext"


def shakespeare_documents(seed=0, doc_bytes=5000):
    """Endless ~5 KB documents of tiny Shakespeare paragraphs drawn at random (so documents do
    not repeat, though their words do: 1 MB of source text)."""
    with open(SHAKESPEARE, encoding="utf-8") as f:
        paragraphs = [p + "\n" for p in f.read().split("\n\n") if p]
    rng = random.Random(seed)
    while True:
        doc, size = [], 0
        while size < doc_bytes:
            p = rng.choice(paragraphs)
            doc.append(p)
            size += len(p)
        yield "\n".join(doc)


def file_documents(roots):
    """Endless documents: every text file (.py .pyi .md .rst .txt, under 2 MB) under `roots`,
    one document each, in sorted order, over and over: a far larger vocabulary than
    Shakespeare's (identifiers, docstrings, READMEs)."""
    paths = []
    for root in roots:
        for dirpath, _, names in os.walk(os.path.expanduser(root)):
            for n in names:
                if n.endswith((".py", ".pyi", ".md", ".rst", ".txt")):
                    p = os.path.join(dirpath, n)
                    if os.path.isfile(p) and os.path.getsize(p) < 2_000_000:
                        paths.append(p)
    paths.sort()
    if not paths:
        sys.exit(f"no text files under {roots}")
    while True:
        for p in paths:
            try:
                with open(p, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if text:
                yield text


def write_shards(root, documents, total_mb, shard_mb):
    """Writes the dataset from the `documents` iterator; returns [(repo path, file path, text
    bytes, documents)]."""
    count = max(1, round(total_mb / shard_mb))
    out = []
    for i in range(count):
        docs, size = [], 0
        while size < shard_mb * 1_000_000:
            d = next(documents)
            docs.append(d)
            size += len(d.encode("utf-8"))
        rel = f"plain_text/train-{i:05d}-of-{count:05d}.parquet"
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table({"text": docs}), path, compression="snappy", row_group_size=1000)
        out.append((rel, path, size, len(docs)))
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def serve(shards):
    listing = json.dumps([
        {"type": "file", "oid": "0", "size": os.path.getsize(p), "path": rel,
         "lfs": {"oid": sha256(p), "size": os.path.getsize(p), "pointerSize": 134}}
        for rel, p, _, _ in shards]).encode()
    files = {rel: p for rel, p, _, _ in shards}

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith(f"/api/datasets/{REPO}/tree/main"):
                body = listing
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            prefix = f"/datasets/{REPO}/resolve/main/"
            rel = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if rel not in files:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = os.path.getsize(files[rel])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(files[rel], "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tree_bytes(path):
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(dirpath, n))
            except OSError:
                pass
    return total


def run_ours(cmd, env, out_dir):
    """Runs cmd, sampling out_dir's download/ folder; returns (summary, wall s, peak download
    bytes, peak RSS bytes). The RSS comes from /usr/bin/time: a child forked from this Python
    process would report Python's own resident size as its peak (ru_maxrss counts the pages it
    had between fork and exec)."""
    rss_file = os.path.join(os.path.dirname(os.path.dirname(out_dir)), "rss.txt")
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_download = 0
    while proc.poll() is None:
        peak_download = max(peak_download, tree_bytes(os.path.join(out_dir, "download")))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1]) * 1024
    return json.loads(stdout), wall, peak_download, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1000, help="megabytes of text in all")
    ap.add_argument("--shard_mb", type=float, default=100, help="megabytes of text per shard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--corpus", default="shakespeare",
                    help="shakespeare, or comma-separated folders whose text files are the documents")
    ap.add_argument("--nanogpt", default="target/release/nanogpt")
    ap.add_argument("--workdir", default="/tmp/nanogpt-owt-bench")
    ap.add_argument("--ranks", default=None, help="r50k_base.tiktoken when offline")
    ap.add_argument("--skip_local", action="store_true", help="do not run the --input variant")
    args = ap.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    hub_root = os.path.join(args.workdir, "hub")
    if args.corpus == "shakespeare":
        documents = shakespeare_documents()
    else:
        documents = file_documents(args.corpus.split(","))
    shards = write_shards(hub_root, documents, args.mb, args.shard_mb)
    text_bytes = sum(s[2] for s in shards)
    documents = sum(s[3] for s in shards)
    parquet_bytes = sum(os.path.getsize(s[1]) for s in shards)
    print(f"dataset: {len(shards)} shards, {documents} documents, {text_bytes / 1e6:.0f} MB text, "
          f"{parquet_bytes / 1e6:.0f} MB parquet")

    enc = gpt2_encoding(args.ranks)
    tik_s, tik_cpu, tik_tokens = 0.0, 0.0, 0
    for _, path, _, _ in shards:
        texts = pq.read_table(path).column("text").to_pylist()
        c0, t0 = time.process_time(), time.perf_counter()
        ids = enc.encode_ordinary_batch(texts, num_threads=args.threads)
        tik_s += time.perf_counter() - t0
        tik_cpu += time.process_time() - c0
        tik_tokens += sum(len(x) for x in ids)
        del ids, texts
    tik_mbs = text_bytes / 1e6 / tik_s
    print(f"tiktoken encode_ordinary_batch ({args.threads} threads): {tik_s:.1f} s, "
          f"{tik_mbs:.1f} MB/s, {tik_cpu:.1f} CPU s, {tik_tokens} tokens")

    base = serve(shards)
    env = dict(os.environ, HF_ENDPOINT=base)
    rows = []
    variants = [("hub", ["--dataset", REPO])]
    if not args.skip_local:
        variants.append(("local --input", ["--input", os.path.join(hub_root, "plain_text")]))
    for name, source in variants:
        data_dir = os.path.join(args.workdir, "data")
        shutil.rmtree(data_dir, ignore_errors=True)
        out_dir = os.path.join(data_dir, "owt")
        cmd = [args.nanogpt, "prepare", "openwebtext", *source, "--num_proc", str(args.threads),
               "--data_dir", data_dir, "--name", "owt", "--json"]
        s, wall, peak_download, rss = run_ours(cmd, env, out_dir)
        tokens = s["train_tokens"] + s["val_tokens"]
        assert tokens == tik_tokens + documents, (tokens, tik_tokens, documents)
        assert s["text_bytes"] == text_bytes, (s["text_bytes"], text_bytes)
        out_bytes = tree_bytes(out_dir)
        mbs = text_bytes / 1e6 / wall
        rows.append((name, wall, mbs, peak_download, rss, out_bytes))
        print(f"ours ({name}): {wall:.1f} s process wall, {mbs:.1f} MB/s "
              f"({mbs / tik_mbs:.2f}x tiktoken), peak download folder {peak_download / 1e6:.0f} MB "
              f"(summary says {s['peak_download_bytes'] / 1e6:.0f} MB), peak RSS {rss / 1e6:.0f} MB, "
              f"output {out_bytes / 1e6:.0f} MB; tokens agree with tiktoken")
        shutil.rmtree(data_dir, ignore_errors=True)
    print("\n| run | MB/s of text | vs tiktoken batch | peak extra disk | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    print(f"| tiktoken encode_ordinary_batch, {args.threads} threads (encode only) | {tik_mbs:.1f} | 1.00x | - | - |")
    for name, wall, mbs, peak, rss, _ in rows:
        print(f"| nanogpt prepare openwebtext, {name} (whole process) | {mbs:.1f} | {mbs / tik_mbs:.2f}x "
              f"| {peak / 1e6:.0f} MB | {rss / 1e6:.0f} MB |")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
