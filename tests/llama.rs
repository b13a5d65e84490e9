//! The Llama host side against llama2.c's and Hugging Face's files in `fixtures/llama` (see its
//! README): weight formats, the tokenizer, run.c's sampler.

mod common;

use common::{json_ids, llama_fixtures};

use common::fixtures;
use nanogpt::llama::run_c::{sample_mult, sample_topp, softmax, Sampler, XorShift};
use nanogpt::llama::tokenizer::{LlamaTokenizer, BOS};
use nanogpt::llama::{
    load_hf_dir, read_llama2c, save_hf_dir, write_llama2c_v1, Llama, Llama2cFormat,
};
use std::path::Path;

fn bits(m: &Llama) -> Vec<u32> {
    m.params.iter().map(|x| x.to_bits()).collect()
}

fn read(name: &str) -> (Llama, Llama2cFormat) {
    read_llama2c(&llama_fixtures().join(name)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Both fixture models: (Hugging Face directory, llama2.c file stem).
const MODELS: [&str; 2] = ["tiny-llama", "tiny-llama-tied"];

#[test]
fn llama2c_v0_v1_and_hf_give_identical_canonical_tensors() {
    for name in MODELS {
        let hf = load_hf_dir(&llama_fixtures().join(name)).unwrap();
        let tied = name.ends_with("tied");
        assert_eq!(hf.config.shared_classifier, tied);
        assert_eq!(
            (hf.config.dim, hf.config.hidden_dim, hf.config.n_layers),
            (64, 192, 3)
        );
        assert_eq!(
            (hf.config.n_heads, hf.config.n_kv_heads, hf.config.seq_len),
            (4, 2, 256)
        );
        let n_tensors = 1 + 9 * 3 + 1 + usize::from(!tied);
        assert_eq!(hf.table.entries.len(), n_tensors, "{name}");
        for (file, format) in [("v0", Llama2cFormat::V0), ("v1", Llama2cFormat::V1)] {
            let (m, got) = read(&format!("{name}.{file}.bin"));
            assert_eq!(got, format);
            assert_eq!(m.config, hf.config, "{name}.{file}");
            assert!(
                bits(&m) == bits(&hf),
                "{name}.{file}: tensors differ from HF's"
            );
        }
    }
}

/// Per-layer tensor sizes of the tiny models in llama2.c's order (v1 and v2 alike after the
/// norms): token embedding, wq, wk, wv, wo, w1, w2, w3 (3 layers each), [wcls].
fn q8_tensor_sizes(tied: bool) -> Vec<usize> {
    let mut sizes = vec![512 * 64];
    for len in [
        64 * 64,
        32 * 64,
        32 * 64,
        64 * 64,
        192 * 64,
        64 * 192,
        192 * 64,
    ] {
        sizes.extend([len; 3]);
    }
    if !tied {
        sizes.push(512 * 64);
    }
    sizes
}

fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[test]
fn llama2c_v2_is_dequantized_as_q_times_scale_within_half_a_step_of_v1() {
    let dir = common::TempDir::new("llama", "v2");
    for name in MODELS {
        let (v2, format) = read(&format!("{name}.v2.bin"));
        assert_eq!(format, Llama2cFormat::V2 { group_size: 64 });
        let (v1, _) = read(&format!("{name}.v1.bin"));
        // Per tensor, the README's bound: half a step of the tensor's largest group.
        for e in &v1.table.entries {
            let (a, b) = (&v1.params[e.range()], &v2.params[e.range()]);
            let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let err = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= max / 127.0 * 0.5 * 1.0001,
                "{name} {}: {err}",
                e.name
            );
            if e.shape.len() == 1 {
                assert_eq!(a, b, "{name} {}: norms are f32 in v2", e.name);
            } else {
                assert!(err > 0.0, "{name} {}: not quantized?", e.name);
            }
        }
        // Exactly q * scale: exported as v1, the dequantized tensors come out in v2's order, so
        // the two files can be walked side by side.
        let out = dir.join(format!("{name}.v1.bin"));
        write_llama2c_v1(&v2, &out).unwrap();
        let (q8, f32s) = (
            std::fs::read(llama_fixtures().join(format!("{name}.v2.bin"))).unwrap(),
            std::fs::read(&out).unwrap(),
        );
        let norms = 4 * (2 * 3 * 64 + 64);
        assert_eq!(q8[256..256 + norms], f32s[256..256 + norms]);
        let (mut at_q, mut at_f) = (256 + norms, 256 + norms);
        for len in q8_tensor_sizes(name.ends_with("tied")) {
            let scales = &q8[at_q + len..at_q + len + 4 * (len / 64)];
            for i in 0..len {
                let want = q8[at_q + i] as i8 as f32 * le_f32(&scales[4 * (i / 64)..]);
                let got = le_f32(&f32s[at_f + 4 * i..]);
                assert_eq!(got.to_bits(), want.to_bits(), "{name}: value {i}");
            }
            at_q += len + 4 * (len / 64);
            at_f += 4 * len;
        }
        assert_eq!((at_q, at_f), (q8.len(), f32s.len()));
    }
}

#[test]
fn llama2c_v1_and_hf_exports_round_trip_bit_exactly() {
    let dir = common::TempDir::new("llama", "export");
    for name in MODELS {
        let hf = load_hf_dir(&llama_fixtures().join(name)).unwrap();
        // From the HF weights, llama2.c's own v1 file byte for byte.
        let v1 = dir.join(format!("{name}.v1.bin"));
        write_llama2c_v1(&hf, &v1).unwrap();
        let fixture = std::fs::read(llama_fixtures().join(format!("{name}.v1.bin"))).unwrap();
        assert!(
            std::fs::read(&v1).unwrap() == fixture,
            "{name}: v1 export differs"
        );
        let hf_out = dir.join(name);
        save_hf_dir(&hf, &hf_out).unwrap();
        let back = load_hf_dir(&hf_out).unwrap();
        assert_eq!(back.config, hf.config);
        assert!(bits(&back) == bits(&hf), "{name}: HF round trip differs");
        let names = |m: &Llama| {
            m.table
                .entries
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&back), names(&hf));
        assert!(!hf_out.join("model.safetensors.tmp").exists());
    }
}

#[test]
fn llama2c_reads_karpathys_stories260k() {
    let (m, format) = read("stories260K.bin");
    assert_eq!(format, Llama2cFormat::V0);
    let c = &m.config;
    assert_eq!(
        (
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size,
            c.seq_len
        ),
        (64, 172, 5, 8, 4, 512, 512)
    );
    assert!(c.shared_classifier);
    assert_eq!(m.table.lm_head, m.table.embed);
}

/// `bytes` written to a temp file named `name`; the error reading it, which must be one line
/// naming the file.
fn read_error(bytes: &[u8], name: &str) -> String {
    let dir = common::TempDir::new("llama", "bad");
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match read_llama2c(&path) {
        Ok(_) => panic!("{name}: read without error"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains('\n'), "{name}: not one line: {err}");
    assert!(err.contains(&path.display().to_string()), "{name}: {err}");
    err
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(llama_fixtures().join(name)).unwrap()
}

#[test]
fn llama2c_bad_files_are_one_line_errors_naming_the_file() {
    for name in [
        "tiny-llama.v0.bin",
        "tiny-llama.v1.bin",
        "tiny-llama-tied.v2.bin",
    ] {
        let good = fixture_bytes(name);
        let err = read_error(&good[..good.len() - 1], &format!("cut-{name}"));
        assert!(err.contains("too short"), "{err}");
        let err = read_error(&good[..20], &format!("header-{name}"));
        assert!(err.contains("truncated"), "{err}");
        let mut long = good.clone();
        long.push(0);
        assert!(read_error(&long, &format!("long-{name}")).contains("too long"));
    }
    let v1 = fixture_bytes("tiny-llama.v1.bin");
    let mut bad = v1.clone();
    bad[0] = b'x';
    let err = read_error(&bad, "magic.bin");
    assert!(err.contains("ak42"), "{err}");
    let mut bad = v1.clone();
    bad[4] = 3;
    assert!(read_error(&bad, "version.bin").contains("version 3"));
    let mut bad = v1.clone();
    bad[16] = 4; // n_layers 3 -> 4
    assert!(read_error(&bad, "layers.bin").contains("too short"));
    let mut bad = v1.clone();
    bad[20] = 3; // n_heads 4 -> 3
    assert!(read_error(&bad, "heads.bin").contains("not a multiple"));
    let mut bad = v1.clone();
    bad[36] = 7;
    assert!(read_error(&bad, "shared.bin").contains("shared_classifier"));
    let mut bad = fixture_bytes("tiny-llama.v2.bin");
    bad[37..41].copy_from_slice(&48i32.to_le_bytes());
    assert!(read_error(&bad, "group.bin").contains("group size 48"));
    let mut bad = fixture_bytes("tiny-llama.v0.bin");
    bad[0..4].copy_from_slice(&(-64i32).to_le_bytes());
    assert!(read_error(&bad, "dim.bin").contains("dim -64"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn llama_hf_dir_that_does_not_match_its_config_is_refused() {
    let dir = common::TempDir::new("llama", "hf-bad");
    copy_dir(&llama_fixtures().join("tiny-llama"), &dir);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let set = |from: &str, to: &str| {
        std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        format!("{:#}", load_hf_dir(&dir).unwrap_err())
    };
    let err = set("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2");
    assert!(err.contains("model.layers.2."), "{err}");
    let err = set("\"intermediate_size\": 192", "\"intermediate_size\": 160");
    assert!(
        err.contains("gate_proj") && err.contains("[160, 64]"),
        "{err}"
    );
    // Untied weights read as tied: the file's own lm_head would be dropped silently.
    let err = set(
        "\"tie_word_embeddings\": false",
        "\"tie_word_embeddings\": true",
    );
    assert!(err.contains("lm_head.weight differs"), "{err}");
    assert!(!err.contains('\n') && err.contains(&dir.display().to_string()));
}

fn run_c_json() -> serde_json::Value {
    let text = std::fs::read_to_string(llama_fixtures().join("run_c.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32_list(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn run_c_xorshift_gives_run_cs_own_numbers_and_coins() {
    let json = run_c_json();
    for case in json["xorshift"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let mut rng = XorShift::new(seed);
        let u32s: Vec<u64> = (0..8).map(|_| rng.random_u32() as u64).collect();
        let want: Vec<u64> = case["random_u32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(u32s, want, "seed {seed}");
        let mut rng = XorShift::new(seed);
        let f32s: Vec<f32> = (0..8).map(|_| rng.random_f32()).collect();
        assert_eq!(f32s, f32_list(&case["random_f32"]), "seed {seed}");
    }
    // Each sampled run drew one coin per sampled token from its seed (`-s`).
    let mut runs = 0;
    for run in json["runs"].as_array().unwrap() {
        let Some(coins) = run.get("coins").filter(|c| !c.is_null()) else {
            continue;
        };
        let argv: Vec<&str> = run["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let seed: u64 = argv[argv.iter().position(|&a| a == "-s").unwrap() + 1]
            .parse()
            .unwrap();
        let coins = f32_list(coins);
        let mut rng = XorShift::new(seed);
        let ours: Vec<f32> = coins.iter().map(|_| rng.random_f32()).collect();
        assert_eq!(ours, coins, "{argv:?}");
        runs += 1;
    }
    assert_eq!(runs, 9);
}

#[test]
fn run_c_sampler_on_hand_made_logits() {
    // Greedy: the first of equal maxima, and no coin drawn.
    let mut greedy = Sampler::new(0.0, 0.9, 42);
    assert_eq!(greedy.sample(&mut [1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(greedy.rng.state, 42);
    // Multinomial in id order: cdf 0.1, 0.3, 0.6, 1.0.
    let probs = [0.1, 0.2, 0.3, 0.4];
    assert_eq!(sample_mult(&probs, 0.05), 0);
    assert_eq!(sample_mult(&probs, 0.25), 1);
    assert_eq!(sample_mult(&probs, 0.99), 3);
    // Top-p 0.9: sorted 1 (.5), 3 (.3), 2 (.15), 0 (.05); the running sum passes 0.9 at 2
    // (0.95), so 0 is out and the coin scales by 0.95.
    let probs = [0.05, 0.5, 0.15, 0.3];
    assert_eq!(sample_topp(&probs, 0.9, 0.5), 1); // r = .475
    assert_eq!(sample_topp(&probs, 0.9, 0.6), 3); // r = .57
    assert_eq!(sample_topp(&probs, 0.9, 0.99), 2); // r = .9405: not 0, which is cut
                                                   // The cutoff (1 - .7) / 3 = .1 drops 0 and 2 before sorting: 1 (.6), 3 (.26), sum .86.
    let probs = [0.05, 0.6, 0.09, 0.26];
    assert_eq!(sample_topp(&probs, 0.7, 0.69), 1); // r = .5934
    assert_eq!(sample_topp(&probs, 0.7, 0.71), 3); // r = .6106
    assert_eq!(sample_topp(&probs, 0.7, 0.999), 3);
    // Ties keep id order: 0, 1, 2 make the nucleus (.75 > .6); r = .375 falls in id 1.
    assert_eq!(sample_topp(&[0.25; 4], 0.6, 0.5), 1);
    assert_eq!(sample_topp(&[0.25; 4], 0.6, 0.7), 2);
    // Temperature divides the logits: [0, ln 3] at 0.5 is [1, 9]/10; seed 42's first coin is
    // 0.339 (run_c.json), above 0.1, so id 1; at temperature 4 the split is
    // [1, 3^0.25] / (1 + 3^0.25) = [.43, .57]: id 0.
    let mut hot = Sampler::new(0.5, 1.0, 42);
    let mut logits = [0.0, 3f32.ln()];
    assert_eq!(hot.sample(&mut logits), 1);
    assert!((logits[0] - 0.1).abs() < 1e-6 && (logits[1] - 0.9).abs() < 1e-6);
    let mut cool = Sampler::new(4.0, 0.0, 42);
    assert_eq!(cool.sample(&mut [0.0, 3f32.ln()]), 0);
    // run.c's softmax: max subtracted, sums to one.
    let mut x = [1000.0, 1000.0];
    softmax(&mut x);
    assert_eq!(x, [0.5, 0.5]);
}

fn tokenizer() -> LlamaTokenizer {
    LlamaTokenizer::read_bin(&llama_fixtures().join("tok512.bin"), 512).unwrap()
}

fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(llama_fixtures().join("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn llama_tokenizer_encodes_as_sentencepiece_and_as_run_c() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 512);
    for case in cases()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode_sentencepiece(text),
            json_ids(&case["ids"]),
            "sp {text:?}"
        );
        let runc = tok.encode_runc(text);
        assert_eq!(runc, json_ids(&case["runc_ids"]), "run.c {text:?}");
        let mut printed = Vec::new();
        let mut prev = BOS;
        for &id in &runc {
            printed.extend(tok.runc_printed(prev, id).unwrap());
            prev = id;
        }
        assert_eq!(
            hex(&printed),
            case["runc_printed_hex"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode_sentencepiece(&json_ids(&case["ids"])).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn llama_tokenizer_decodes_as_sentencepiece() {
    let tok = tokenizer();
    for case in cases()["decode_cases"].as_array().unwrap() {
        let ids = json_ids(&case["ids"]);
        let want = case["decoded"].as_str().unwrap();
        // tokenizer.bin does not record `<unk>`'s text; sentencepiece's default stands in.
        let want = want.replace(" \\342\\201\\207 ", " \u{2047} ");
        assert_eq!(tok.decode_sentencepiece(&ids).unwrap(), want, "{ids:?}");
    }
    let err = tok.decode_sentencepiece(&[5, 512]).unwrap_err().to_string();
    assert!(err.contains("512"), "{err}");
}

/// run.c's prompt ids (BOS first) and its whole printed output, for every recorded run.
#[test]
fn llama_tokenizer_reproduces_run_cs_prompts_and_output() {
    let tok = tokenizer();
    for run in run_c_json()["runs"].as_array().unwrap() {
        let prompt = run["prompt"].as_str().unwrap_or("");
        let mut want = vec![BOS];
        want.extend(tok.encode_runc(prompt));
        assert_eq!(want, json_ids(&run["prompt_ids"]), "{prompt:?}");
        let all = json_ids(&run["ids"]);
        let mut out = Vec::new();
        for w in all.windows(2) {
            if w[1] == BOS {
                break;
            }
            out.extend(tok.runc_printed(w[0], w[1]).unwrap());
        }
        out.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&out),
            run["stdout"].as_str().unwrap(),
            "{:?}",
            run["argv"]
        );
    }
}

#[test]
fn llama_tokenizer_training_stream_matches_sentencepiece() {
    use sha2::{Digest, Sha256};
    let tok = tokenizer();
    let text = std::fs::read_to_string(fixtures().join("../data/tinyshakespeare.txt")).unwrap();
    let sha = |ids: &[u32]| {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect();
        hex(&Sha256::digest(&bytes))
    };
    let cases = cases();
    let first: String = text.chars().take(10_000).collect();
    let ids = tok.encode_sentencepiece(&first);
    assert_eq!(
        ids.len() as u64,
        cases["shakespeare_first_10k_chars"]["n_tokens"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(
        sha(&ids),
        cases["shakespeare_first_10k_chars"]["sha256_u16le"]
            .as_str()
            .unwrap()
    );
}

#[test]
fn llama_tokenizer_model_equals_its_bin_export_and_decodes_unk_as_trained() {
    let bin = tokenizer();
    let model = LlamaTokenizer::read_model(&llama_fixtures().join("tok512.model")).unwrap();
    assert_eq!(model.pieces, bin.pieces);
    assert_eq!(model.scores, bin.scores);
    assert_eq!(model.kinds, bin.kinds);
    assert!(model.add_dummy_prefix && model.remove_extra_whitespaces);
    for case in cases()["decode_cases"].as_array().unwrap() {
        let want = case["decoded"].as_str().unwrap();
        assert_eq!(
            model.decode_sentencepiece(&json_ids(&case["ids"])).unwrap(),
            want
        );
    }
    for case in cases()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.encode_sentencepiece(text),
            json_ids(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn llama_tokenizer_bad_files_are_one_line_errors_naming_the_file() {
    let dir = common::TempDir::new("llama", "bad-tok");
    for (name, cut) in [
        ("tok512.bin", 100),
        ("tok512.model", 7000),
        ("tok512.model", 3),
    ] {
        let bytes = fixture_bytes(name);
        let path = dir.join(format!("{cut}-{name}"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = match name.ends_with(".bin") {
            true => LlamaTokenizer::read_bin(&path, 512),
            false => LlamaTokenizer::read_model(&path),
        };
        let err = format!("{:#}", err.unwrap_err());
        assert!(
            err.contains(&path.display().to_string()) && err.contains("truncated"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
    // Whole, but for a model of another vocabulary size.
    for vocab in [511, 513] {
        let err =
            LlamaTokenizer::read_bin(&llama_fixtures().join("tok512.bin"), vocab).unwrap_err();
        assert!(format!("{err:#}").contains("tok512.bin"), "{err:#}");
    }
}
