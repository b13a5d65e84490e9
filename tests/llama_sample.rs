//! `nanogpt sample` on Llama models, through the binary, against `../shared/fixtures/llama`:
//! transformers' greedy, repetition-penalty and beam-search ids (`generation.json`), and
//! llama2.c's own `run.c` (`run_c.json`): with `--sampler=run_c`, the same ids and the same
//! printed text, greedy and seeded, on the tiny model and on karpathy's stories260K.

mod common;

use common::{json_ids, llama_fixtures, sample_bin};

use common::{fixtures, nanogpt};
use serde_json::Value;

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(llama_fixtures().join(name)).expect("read fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

#[test]
fn llama_greedy_penalty_and_beam_ids_match_transformers() {
    let model = llama_fixtures().join("tiny-llama");
    let tokenizer = llama_fixtures().join("tok512.model");
    let mut checked = 0;
    for g in json("generation.json")["generations"].as_array().unwrap() {
        let kwargs = &g["kwargs"];
        let mut args = vec![
            format!("--init_from={}", model.display()),
            format!("--tokenizer={}", tokenizer.display()),
            format!("--start={}", g["prompt"].as_str().unwrap()),
            format!("--max_new_tokens={}", g["max_new_tokens"]),
            "--num_samples=1".into(),
            "--temperature=0".into(),
            "--stop_at_eot=false".into(),
            "--json".into(),
        ];
        if let Some(p) = kwargs.get("repetition_penalty") {
            args.push(format!("--repetition_penalty={p}"));
        }
        if let Some(n) = kwargs.get("num_beams") {
            args.push(format!("--num_beams={n}"));
            args.push(format!("--early_stopping={}", kwargs["early_stopping"]));
            args.push(format!("--length_penalty={}", kwargs["length_penalty"]));
        }
        let out = sample_bin(&args);
        let line: Value = serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap())
            .expect("a JSON line");
        assert_eq!(
            json_ids(&line["prompt_ids"]),
            json_ids(&g["prompt_ids"]),
            "prompt ids of {args:?}"
        );
        assert_eq!(
            json_ids(&line["generated_ids"]),
            json_ids(&g["new_ids"][0]),
            "{} {:?}",
            g["setting"],
            g["prompt"]
        );
        assert_eq!(
            line["text"].as_str(),
            g["new_text"][0].as_str(),
            "text of {args:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
}

/// The run.c runs this crate reproduces exactly: run.c's own (runq.c's are in
/// `tests/llama_q8.rs`).
#[test]
fn run_c_sampler_reproduces_run_cs_ids_and_output() {
    let tokenizer = llama_fixtures().join("tok512.bin");
    let (mut exact, mut partial) = (0, 0);
    for run in json("run_c.json")["runs"].as_array().unwrap() {
        if run["program"] != "run.c" {
            continue;
        }
        let argv: Vec<&str> = run["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let flag = |f: &str| argv.iter().position(|&a| a == f).map(|i| argv[i + 1]);
        let steps: usize = flag("-n").unwrap().parse().unwrap();
        let prompt_ids = json_ids(&run["prompt_ids"]);
        let mut args = vec![
            format!("--init_from={}", llama_fixtures().join(argv[1]).display()),
            format!("--tokenizer={}", tokenizer.display()),
            "--sampler=run_c".into(),
            format!("--start={}", flag("-i").unwrap_or("")),
            format!("--max_new_tokens={}", steps + 1 - prompt_ids.len()),
            format!("--temperature={}", flag("-t").unwrap()),
            "--num_samples=1".into(),
        ];
        if let Some(p) = flag("-p") {
            args.push(format!("--top_p={p}"));
        }
        if let Some(s) = flag("-s") {
            args.push(format!("--seed={s}"));
        }
        let printed = sample_bin(&args);
        args.push("--json".into());
        let line: Value = serde_json::from_slice(&sample_bin(&args)).expect("a JSON line");
        assert_eq!(
            json_ids(&line["prompt_ids"]),
            prompt_ids,
            "prompt of {argv:?}"
        );
        let (ours, mut theirs) = (json_ids(&line["new_ids"]), json_ids(&run["new_ids"]));
        // The fixture lists the BOS that ended a run; ours says so in stopped_on_bos.
        if run["stopped_on_bos"] == true {
            assert_eq!(theirs.pop(), Some(1), "{argv:?}");
        }
        match run.get("first_fragile_step").and_then(Value::as_u64) {
            // Past a fragile step the outcome hangs on the logits' last bits (see the README).
            Some(fragile) => {
                let n = fragile as usize;
                assert_eq!(
                    ours[..n],
                    theirs[..n],
                    "{argv:?} before its fragile step {n}"
                );
                partial += 1;
            }
            None => {
                assert_eq!(ours, theirs, "{argv:?}");
                assert_eq!(line["stopped_on_bos"], run["stopped_on_bos"], "{argv:?}");
                assert_eq!(
                    String::from_utf8_lossy(&printed),
                    run["stdout"].as_str().unwrap(),
                    "printed text of {argv:?}"
                );
                exact += 1;
            }
        }
    }
    assert_eq!((exact, partial), (15, 4));
}

#[test]
fn llama_sampling_errors_name_the_missing_piece() {
    let model = llama_fixtures().join("tiny-llama.v1.bin");
    // No tokenizer beside the fixture's .bin (tok512.* are not named tokenizer.*).
    let out = nanogpt()
        .args(["sample", &format!("--init_from={}", model.display())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tokenizer"),
        "{err}"
    );
    let gpt2 = fixtures().join("tiny-gpt2");
    let out = nanogpt()
        .args([
            "sample",
            &format!("--init_from={}", gpt2.display()),
            "--sampler=run_c",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Llama"), "{err}");
}
