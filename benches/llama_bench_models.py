"""Random-weight Llama models of llama2.c's stories15M, 42M and 110M shapes (and a 32000-token
tokenizer.bin to run them with), for benches/llama_vs_run_c.sh.

Each shape is written twice: llama2.c's legacy v0 file (f32, what run.c reads) and its version 2
file (Q8_0, what runq.c reads), from the same weights. Weights are N(0, 0.02), norms 1; the
classifier is tied and BOS's embedding row is zero, so BOS's logit is exactly 0 and greedy
decoding of random weights never picks it (run.c would stop there): every run does all its steps.

Usage: python3 llama_bench_models.py OUT_DIR [shape ...]   (needs numpy)
"""
import struct
import sys
from pathlib import Path

import numpy as np

SHAPES = {
    # name: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len (llama2.c's zoo)
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
}
GROUP = 64


def weights(shape, seed):
    dim, hidden, layers, heads, kv_heads, vocab, seq = shape
    kv = dim // heads * kv_heads
    rng = np.random.default_rng(seed)
    n = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float32)
    w = {
        "emb": n(vocab, dim),
        "rms_att": np.ones((layers, dim), np.float32),
        "wq": n(layers, dim, dim),
        "wk": n(layers, kv, dim),
        "wv": n(layers, kv, dim),
        "wo": n(layers, dim, dim),
        "rms_ffn": np.ones((layers, dim), np.float32),
        "w1": n(layers, hidden, dim),
        "w2": n(layers, dim, hidden),
        "w3": n(layers, hidden, dim),
        "rms_final": np.ones(dim, np.float32),
    }
    w["emb"][1] = 0.0
    return w


def write_v0(path, shape, w):
    dim, hidden, layers, heads, kv_heads, vocab, seq = shape
    hd = dim // heads
    freqs = 1.0 / (10000.0 ** (np.arange(0, hd, 2)[: hd // 2] / hd))
    angles = np.outer(np.arange(seq), freqs)
    with open(path, "wb") as f:
        f.write(struct.pack("7i", dim, hidden, layers, heads, kv_heads, vocab, seq))
        for k in ["emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]:
            f.write(w[k].astype("<f4").tobytes())
        f.write(np.cos(angles).astype("<f4").tobytes())
        f.write(np.sin(angles).astype("<f4").tobytes())


def q8(x):
    g = x.reshape(-1, GROUP).astype(np.float32)
    scale = np.abs(g).max(axis=1) / 127.0
    q = np.round(g / np.where(scale == 0, 1, scale)[:, None]).astype(np.int8)
    return q.tobytes() + scale.astype("<f4").tobytes()


def write_v2(path, shape, w):
    dim, hidden, layers, heads, kv_heads, vocab, seq = shape
    header = struct.pack("<I", 0x616B3432) + struct.pack("<i", 2)
    header += struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq)
    header += struct.pack("<B", 1) + struct.pack("<i", GROUP)
    header += b"\0" * (256 - len(header))
    with open(path, "wb") as f:
        f.write(header)
        for k in ["rms_att", "rms_ffn", "rms_final"]:
            f.write(w[k].astype("<f4").tobytes())
        f.write(q8(w["emb"]))
        for k in ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]:
            for layer in w[k]:
                f.write(q8(layer))


def write_tokenizer(path, vocab):
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    pieces += [b"t%d" % i for i in range(vocab - len(pieces))]
    with open(path, "wb") as f:
        f.write(struct.pack("<I", max(len(p) for p in pieces)))
        for i, p in enumerate(pieces):
            f.write(struct.pack("<fi", -float(i), len(p)) + p)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(SHAPES)
    write_tokenizer(out / "tok32000.bin", 32000)
    for i, name in enumerate(names):
        shape = SHAPES[name]
        w = weights(shape, 1000 + i)
        write_v0(out / f"random{name}.v0.bin", shape, w)
        write_v2(out / f"random{name}.v2.bin", shape, w)
        print(f"wrote {out}/random{name}.v0.bin and .v2.bin", file=sys.stderr)


if __name__ == "__main__":
    main()
