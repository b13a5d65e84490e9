"""Writes tests/data/decoding_refs.json: references for the decoding options of issue 18, on the
tiny-gpt2 fixture (../shared/fixtures/tiny-gpt2), f32 on the CPU.

- `warpers`: the last position's logits of each prompt through transformers' EpsilonLogitsWarper
  / EtaLogitsWarper (alone and after temperature): how many ids are still finite, their sum, and
  the ids themselves when there are at most 300. Sampling itself cannot be
  compared (different random streams), the filtered distribution can.
- `generations`: transformers 5.x `generate` (greedy and beam search) with bad_words_ids,
  sequence_bias and exponential_decay_length_penalty; `new_ids` as generate returns them (an
  EOS, when there is one, is the last id).
- `group_beam` and `contrastive`: transformers 5.x moved diverse (group) beam search and
  contrastive search to the hub (transformers-community/group-beam-search, .../contrastive-search),
  which this script does not download; it runs short PyTorch versions of them instead, written
  from the algorithms (Vijayakumar et al. 2016 with transformers' Hamming diversity and beam
  bookkeeping; Su et al. 2022 as transformers ran it), on the transformers GPT-2 model.
  Checked once against transformers 4.53.3, the last release that still ran both itself
  (`generate(num_beam_groups=..., diversity_penalty=...)`, `generate(penalty_alpha=...,
  top_k=...)`): all 18 references identical.

Run from the repository root, with torch and transformers installed:
    HF_HUB_OFFLINE=1 python tests/data/make_decoding_refs.py
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import GenerationConfig, GPT2LMHeadModel
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
)

FIXTURES = os.environ.get("FIXTURES", os.path.join(os.path.dirname(__file__), "../../../shared/fixtures"))
OUT = os.path.join(os.path.dirname(__file__), "decoding_refs.json")
EOS = 50256

torch.set_num_threads(2)
torch.manual_seed(0)
model = GPT2LMHeadModel.from_pretrained(os.path.join(FIXTURES, "tiny-gpt2")).eval()

with open(os.path.join(FIXTURES, "tiny-gpt2-generation.json")) as f:
    PROMPTS = {}
    for g in json.load(f)["generations"]:
        PROMPTS[g["prompt"]] = g["prompt_ids"]
PROMPTS = list(PROMPTS.items())


@torch.no_grad()
def last_logits(ids):
    return model(torch.tensor([ids])).logits[0, -1].float()


def warpers():
    # tiny-gpt2 is sure of itself: these values keep between one and thousands of tokens.
    cases = [
        ("epsilon_cutoff", 0.001, 1.5, 1),
        ("epsilon_cutoff", 0.0003, 1.0, 1),
        ("epsilon_cutoff", 0.003, 1.2, 1),
        ("epsilon_cutoff", 0.9, 1.0, 2),
        ("eta_cutoff", 0.002, 1.5, 1),
        ("eta_cutoff", 0.0005, 1.0, 1),
        ("eta_cutoff", 0.3, 1.5, 2),
    ]
    out = []
    for prompt, ids in PROMPTS:
        raw = last_logits(ids)
        for name, value, temperature, min_keep in cases:
            warp = EpsilonLogitsWarper if name == "epsilon_cutoff" else EtaLogitsWarper
            procs = LogitsProcessorList()
            if temperature != 1.0:
                procs.append(TemperatureLogitsWarper(temperature))
            procs.append(warp(value, min_tokens_to_keep=min_keep))
            row = procs(torch.tensor([ids]), raw[None].clone())[0]
            kept = torch.nonzero(torch.isfinite(row)).flatten().tolist()
            case = {
                "prompt_ids": ids, "name": name, "value": value, "temperature": temperature,
                "min_keep": min_keep, "kept_count": len(kept), "kept_id_sum": sum(kept),
            }
            if len(kept) <= 300:  # keeps the file small; count and sum stand in for long lists
                case["kept_ids"] = kept
            out.append(case)
    return out


@torch.no_grad()
def hf_generate(ids, kwargs, max_new, eos):
    cfg = GenerationConfig(max_new_tokens=max_new, eos_token_id=eos, pad_token_id=EOS, **kwargs)
    seqs = model.generate(torch.tensor([ids]), generation_config=cfg)
    return [s[len(ids):].tolist() for s in seqs]


def generations():
    settings = [
        ("bad_words", {"do_sample": False, "bad_words_ids": [[1870, 263], [11, 198], [13]]}, None),
        ("bad_words_beam", {"do_sample": False, "num_beams": 3, "bad_words_ids": [[198], [11, 290]]}, None),
        ("sequence_bias", {"do_sample": False, "sequence_bias": [[[198], -3.0], [[11, 290], 2.5], [[262], 1.0]]}, None),
        ("sequence_bias_beam", {"do_sample": False, "num_beams": 3, "sequence_bias": [[[198], -2.0], [[13, 198], 4.0]]}, None),
        ("length_decay", {"do_sample": False, "exponential_decay_length_penalty": (4, 1.6)}, EOS),
        ("length_decay_beam", {"do_sample": False, "num_beams": 3, "exponential_decay_length_penalty": (6, 1.3)}, EOS),
    ]
    out = []
    for prompt, ids in PROMPTS:
        for name, kwargs, eos in settings:
            max_new = 30
            out.append({
                "prompt_ids": ids, "setting": name, "kwargs": kwargs, "max_new_tokens": max_new,
                "eos_token_id": eos, "new_ids": hf_generate(ids, kwargs, max_new, eos),
            })
    return out


def penalties(ids_so_far, scores, kwargs):
    """The transformers processors the references combine with (penalties, in generate's order)."""
    procs = LogitsProcessorList()
    if kwargs.get("repetition_penalty", 1.0) != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(kwargs["repetition_penalty"]))
    if kwargs.get("no_repeat_ngram_size", 0) > 0:
        procs.append(NoRepeatNGramLogitsProcessor(kwargs["no_repeat_ngram_size"]))
    return procs(ids_so_far, scores)


@torch.no_grad()
def group_beam_search(ids, num_beams, num_beam_groups, diversity_penalty, max_new, num_return, kwargs):
    """transformers' group beam search without an EOS: each step the groups choose in turn; a
    group's log-probs lose diversity_penalty x (how often earlier groups chose the token at this
    step); each group keeps its best num_beams/num_beam_groups continuations; at the end all
    beams are ranked by score / generated_len^length_penalty (length_penalty 1)."""
    size = num_beams // num_beam_groups
    beams = [(list(ids), 0.0 if i % size == 0 else -1e9) for i in range(num_beams)]
    for _ in range(max_new):
        logits = model(torch.tensor([b[0] for b in beams])).logits[:, -1].float()
        logp = F.log_softmax(logits, dim=-1)
        chosen = []  # tokens chosen at this step by earlier groups
        nxt = []
        for g in range(num_beam_groups):
            rows = list(range(g * size, (g + 1) * size))
            scores = logp[rows].clone()
            if chosen:
                freq = torch.bincount(torch.tensor(chosen), minlength=scores.shape[-1]).float()
                scores -= diversity_penalty * freq
            group_ids = torch.tensor([beams[r][0] for r in rows])
            scores = penalties(group_ids, scores, kwargs)
            scores = scores + torch.tensor([beams[r][1] for r in rows])[:, None]
            top, flat = torch.topk(scores.flatten(), 2 * size)
            for s, i in list(zip(top.tolist(), flat.tolist()))[:size]:
                b, t = divmod(i, scores.shape[-1])
                nxt.append((beams[rows[b]][0] + [t], s))
                chosen.append(t)
        beams = nxt
    ranked = sorted(beams, key=lambda b: b[1] / max_new, reverse=True)
    return [b[0][len(ids):] for b in ranked[:num_return]]


def group_beams():
    settings = [
        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0, "num_return_sequences": 4},
        {"num_beams": 6, "num_beam_groups": 3, "diversity_penalty": 0.5, "num_return_sequences": 3},
        {"num_beams": 4, "num_beam_groups": 4, "diversity_penalty": 2.0, "num_return_sequences": 2,
         "repetition_penalty": 1.3},
    ]
    out = []
    for prompt, ids in PROMPTS:
        for kw in settings:
            max_new = 20
            new = group_beam_search(ids, kw["num_beams"], kw["num_beam_groups"], kw["diversity_penalty"],
                                    max_new, kw["num_return_sequences"], kw)
            out.append({"prompt_ids": ids, "kwargs": dict(kw, do_sample=False), "max_new_tokens": max_new,
                        "eos_token_id": None, "new_ids": new})
    return out


@torch.no_grad()
def contrastive_search(ids, penalty_alpha, top_k, max_new, kwargs):
    """Su et al. 2022 as transformers ran it: the top_k most likely next tokens (after the
    penalties) are each fed to the model; a candidate scores (1 - alpha) * its probability -
    alpha * the largest cosine similarity between its last hidden state (after ln_f) and those of
    every earlier token; the best one (the first on ties) is taken. No cache: each candidate
    is a full forward pass, independent of the implementation under test."""
    out = model(torch.tensor([ids]), output_hidden_states=True)
    context = out.hidden_states[-1][0]
    logits = out.logits[0, -1].float()
    seq = list(ids)
    new = []
    for _ in range(max_new):
        scores = penalties(torch.tensor([seq]), logits[None], kwargs)[0]
        probs = F.softmax(scores, dim=-1)
        top_p, top_i = torch.topk(probs, top_k)
        cands = torch.tensor([seq + [t] for t in top_i.tolist()])
        o = model(cands, output_hidden_states=True)
        h = o.hidden_states[-1][:, -1]
        cos = (h / h.norm(dim=-1, keepdim=True)) @ (context / context.norm(dim=-1, keepdim=True)).T
        score = (1.0 - penalty_alpha) * top_p - penalty_alpha * cos.max(dim=-1).values
        j = int(score.argmax())
        seq.append(int(top_i[j]))
        new.append(int(top_i[j]))
        context = torch.cat([context, h[j:j + 1]])
        logits = o.logits[j, -1].float()
    return new


def contrastive():
    settings = [
        {"penalty_alpha": 0.6, "top_k": 4},
        {"penalty_alpha": 0.3, "top_k": 8},
        {"penalty_alpha": 0.6, "top_k": 4, "no_repeat_ngram_size": 3},
    ]
    out = []
    for prompt, ids in PROMPTS:
        for kw in settings:
            max_new = 30
            new = contrastive_search(ids, kw["penalty_alpha"], kw["top_k"], max_new, kw)
            out.append({"prompt_ids": ids, "kwargs": dict(kw, do_sample=False), "max_new_tokens": max_new,
                        "eos_token_id": None, "new_ids": [new]})
    return out


def check_hidden_states_are_after_ln_f():
    out = model(torch.tensor([PROMPTS[0][1]]), output_hidden_states=True)
    logits = out.hidden_states[-1] @ model.transformer.wte.weight.T
    assert torch.allclose(logits, out.logits, atol=1e-4), "hidden_states[-1] is not after ln_f"


def main():
    check_hidden_states_are_after_ln_f()
    refs = {
        "made_with": f"torch {torch.__version__}, transformers {transformers.__version__}, f32, CPU",
        "model": "tiny-gpt2",
        "warpers": warpers(),
        "generations": generations(),
        "group_beam": group_beams(),
        "contrastive": contrastive(),
    }
    with open(OUT, "w") as f:
        json.dump(refs, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
