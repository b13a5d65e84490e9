"""GPT-2 tokenization throughput: Python tiktoken against `prepare text`, on the same documents.

Builds a JSON-lines corpus from tiny Shakespeare (paragraphs grouped into ~5 KB documents, about
OpenWebText's mean, the whole text repeated up to --mb megabytes), then times tiktoken's
`encode_ordinary` one document at a time on one thread and `encode_ordinary_batch` with
--threads threads. With --one-document the corpus is instead one big .txt file (one document).
MB/s counts the documents' UTF-8 text bytes (10^6 bytes per MB); the CPU seconds are printed too,
since on a busy machine wall-clock rates say more about the neighbours than about the code.

With --ours, also runs that command (`{input}` and `{out}` are replaced by the corpus path and an
output folder) and reports its wall-clock MB/s over the same text bytes; its time includes
reading, JSON parsing and writing the token files. If `{out}` then holds train.bin/val.bin, their
token count is checked against tiktoken's (+1 end-of-text token per document). For example:

    ~/pyref/bin/python benches/tokenize_throughput.py --mb 64 \
        --ours "target/release/nanogpt --threads 2 prepare text --input {input} --out_dir {out}"

(use whatever spelling the CLI has). Needs tiktoken (`~/pyref/bin/pip install tiktoken`). GPT-2's
ranks come from tiktoken's cache or download; offline, from --ranks, or else from the
r50k_base.tiktoken that the tiktoken-rs crate ships (found under ~/.cargo/registry/src); r50k_base
is GPT-2's encoding (same ranks, pattern and end-of-text token).
"""

import argparse
import glob
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")


def build_documents(path, target_bytes, doc_bytes=5000):
    with open(path, encoding="utf-8") as f:
        paragraphs = [p + "\n" for p in f.read().split("\n\n") if p]
    docs, total, current = [], 0, []
    while total < target_bytes:
        for p in paragraphs:
            current.append(p)
            if sum(len(x) for x in current) >= doc_bytes:
                doc = "\n".join(current)
                docs.append(doc)
                total += len(doc.encode("utf-8"))
                current = []
                if total >= target_bytes:
                    break
    return docs, total


def gpt2_encoding(ranks_path):
    if ranks_path is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline, nothing cached
            found = sorted(glob.glob(os.path.expanduser(
                "~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
            if not found:
                sys.exit(f"cannot load tiktoken's gpt2 ({e}); pass --ranks path/to/r50k_base.tiktoken")
            ranks_path = found[-1]
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    print(f"GPT-2 ranks from {ranks_path}")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(ranks_path),
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


def cpu_seconds():
    """CPU time of this process and its finished children (user + system)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(repeats, fn):
    """The fastest of `repeats` runs: (wall s, CPU s of that run, result)."""
    runs, result = [], None
    for _ in range(repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = fn()
        runs.append((time.perf_counter() - t0, cpu_seconds() - c0))
    wall, cpu = min(runs)
    return wall, cpu, result


def report(label, mb, wall, cpu, extra=""):
    # On a busy machine wall-clock MB/s drops; MB per CPU-second shows the work itself.
    print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU: {mb / wall:.2f} MB/s, "
          f"{mb / cpu:.2f} MB per CPU-s{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="corpus size in MB of text")
    ap.add_argument("--threads", type=int, default=2, help="threads for encode_ordinary_batch")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs each; the best is kept")
    ap.add_argument("--corpus", default=None, help="where to write the JSON-lines corpus")
    ap.add_argument("--ours", default=None, help="command to time; {input} and {out} are replaced")
    ap.add_argument("--input", default=SHAKESPEARE, help="text to build documents from")
    ap.add_argument("--ranks", default=None, help="a local r50k_base.tiktoken (GPT-2's ranks)")
    ap.add_argument("--one-document", action="store_true",
                    help="the corpus is one big .txt document (the text repeated), as a user's "
                         "own single-file corpus; tiktoken's batch call cannot split it")
    args = ap.parse_args()

    docs, text_bytes = build_documents(args.input, int(args.mb * 1e6))
    if args.one_document:
        docs = ["\n".join(docs)]
        text_bytes = len(docs[0].encode("utf-8"))
    work = tempfile.mkdtemp(prefix="tokenize-throughput-")
    suffix = ".txt" if args.one_document else ".jsonl"
    corpus = args.corpus or os.path.join(work, "corpus" + suffix)
    with open(corpus, "w", encoding="utf-8", newline="") as f:
        for d in docs:
            f.write(d if args.one_document else json.dumps({"text": d}) + "\n")
    mb = text_bytes / 1e6
    print(f"corpus: {corpus}: {len(docs)} documents, {mb:.1f} MB of text, "
          f"{os.path.getsize(corpus) / 1e6:.1f} MB on disk")

    enc = gpt2_encoding(args.ranks)
    assert enc.encode_ordinary("You are my sunshine.") == [1639, 389, 616, 34488, 13]

    def single():
        return sum(len(enc.encode_ordinary(d)) for d in docs)

    def batch():
        return sum(len(t) for t in enc.encode_ordinary_batch(docs, num_threads=args.threads))

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    t1, c1, n1 = best_of(args.repeats, single)
    report(f"tiktoken {tiktoken.__version__} encode_ordinary, 1 thread", mb, t1, c1, f", {n1} tokens")
    if not args.one_document:
        t2, c2, n2 = best_of(args.repeats, batch)
        report(f"tiktoken encode_ordinary_batch, {args.threads} threads", mb, t2, c2,
               f", {n2} tokens")
        assert n1 == n2, (n1, n2)

    if args.ours:
        out = os.path.join(work, "out")
        cmd = args.ours.replace("{input}", shlex.quote(corpus)).replace("{out}", shlex.quote(out))

        def ours():
            subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)

        t3, c3, _ = best_of(args.repeats, ours)
        report(f"ours ({cmd}; reading and writing included)", mb, t3, c3)
        bins = [os.path.join(out, n) for n in ("train.bin", "val.bin")]
        if all(os.path.exists(b) for b in bins):
            n3 = sum(os.path.getsize(b) for b in bins) // 2
            ok = n3 == n1 + len(docs)
            print(f"ours wrote {n3} tokens: {'matches' if ok else 'DIFFERS FROM'} tiktoken "
                  f"({n1} + {len(docs)} end-of-text)")
            if not ok:
                sys.exit(1)


if __name__ == "__main__":
    main()
