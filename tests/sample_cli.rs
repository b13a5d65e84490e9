//! `nanogpt sample` and `nanogpt repetition` through their library entry points, on tiny-gpt2:
//! JSON output against transformers' greedy/beam generations, streaming = JSON text, prompts from
//! files, model-source errors, and the repetition table.

mod common;

use common::{fixtures, TempDir};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::model::Gpt;
use nanogpt::sample::{run_repetition, run_sample, RepetitionArgs, SampleArgs, SEPARATOR};
use nanogpt::tokenizer::CharVocab;
use nanogpt::train::TrainConfig;
use serde_json::Value;
use std::path::PathBuf;

fn tiny_arg() -> String {
    format!("--init_from={}", fixtures().join("tiny-gpt2").display())
}

/// Runs `nanogpt sample ARGS`; returns (result, stdout, stderr).
fn sample(args: &[String]) -> (anyhow::Result<()>, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let result = SampleArgs::parse_from(args)
        .and_then(|a| run_sample(&a, &mut out, &mut err))
        .map(|_| ());
    (
        result,
        String::from_utf8(out).expect("stdout is UTF-8"),
        String::from_utf8(err).expect("stderr is UTF-8"),
    )
}

fn sample_ok(args: &[String]) -> (String, String) {
    let (r, out, err) = sample(args);
    if let Err(e) = r {
        panic!("sample {args:?} failed: {e:#}\nstderr: {err}");
    }
    (out, err)
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn json_greedy_and_beam_match_transformers() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-gpt2-generation.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for g in fx["generations"].as_array().unwrap() {
        let setting = g["setting"].as_str().unwrap();
        let extra: Vec<String> = match setting {
            "greedy" => vec![],
            "repetition_penalty_1.3" => vec![s("--repetition_penalty=1.3")],
            "beam_4_no_repeat_2_return_2" => vec![
                s("--num_beams=4"),
                s("--no_repeat_ngram_size=2"),
                s("--num_return_sequences=2"),
                s("--early_stopping=True"),
            ],
            _ => continue,
        };
        let prompt = g["prompt"].as_str().unwrap();
        let mut args = vec![
            tiny_arg(),
            format!("--start={prompt}"),
            s("--temperature=0"),
            s("--num_samples=1"),
            format!("--max_new_tokens={}", g["max_new_tokens"]),
            s("--json"),
        ];
        args.extend(extra);
        let (out, _) = sample_ok(&args);
        let recs = json_lines(&out);
        let want: Vec<Vec<u64>> = g["new_ids"].as_array().unwrap().iter().map(ids).collect();
        let got: Vec<Vec<u64>> = recs.iter().map(|r| ids(&r["generated_ids"])).collect();
        assert_eq!(got, want, "{prompt:?} / {setting}");
        for (r, text) in recs.iter().zip(g["new_text"].as_array().unwrap()) {
            assert_eq!(ids(&r["prompt_ids"]), ids(&g["prompt_ids"]));
            assert_eq!(r["prompt"], prompt);
            assert_eq!(&r["text"], text, "{prompt:?} / {setting}");
            assert_eq!(r["finish_reason"], "length");
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn streaming_text_equals_json_text_whatever_the_batching() {
    let base = vec![
        tiny_arg(),
        s("--start=ROMEO:"),
        s("--num_samples=5"),
        s("--max_new_tokens=30"),
        s("--stop=\\n\\n"),
        s("--seed=7"),
    ];
    let (json_out, _) = sample_ok(&[base.clone(), vec![s("--json")]].concat());
    let recs = json_lines(&json_out);
    assert_eq!(recs.len(), 5);
    let expected: String = recs
        .iter()
        .map(|r| {
            format!(
                "{}{}\n{SEPARATOR}\n",
                r["prompt"].as_str().unwrap(),
                r["text"].as_str().unwrap()
            )
        })
        .collect();
    for batch in ["0", "1", "2"] {
        let (out, _) = sample_ok(&[base.clone(), vec![format!("--batch_size={batch}")]].concat());
        assert_eq!(out, expected, "batch_size {batch}");
    }
    // The stop string cuts the text right after it.
    for r in &recs {
        let text = r["text"].as_str().unwrap();
        if r["finish_reason"] == "stop" {
            assert_eq!(r["stop"], "\n\n");
            assert!(text.ends_with("\n\n"), "{text:?}");
            assert_eq!(text.matches("\n\n").count(), 1, "{text:?}");
        } else {
            assert!(!text.contains("\n\n"));
        }
    }
    // Beam search prints its sequences one after another too.
    let beam = vec![
        tiny_arg(),
        s("--start=ROMEO:"),
        s("--temperature=0"),
        s("--max_new_tokens=12"),
        s("--num_beams=3"),
        s("--num_return_sequences=2"),
    ];
    let (json_out, _) = sample_ok(&[beam.clone(), vec![s("--json")]].concat());
    let (stream_out, err) = sample_ok(&beam);
    let expected: String = json_lines(&json_out)
        .iter()
        .map(|r| format!("ROMEO:{}\n{SEPARATOR}\n", r["text"].as_str().unwrap()))
        .collect();
    assert_eq!(stream_out, expected);
    assert!(err.contains("num_return_sequences"), "{err}");
}

#[test]
fn start_from_a_file_and_a_missing_file() {
    let dir = TempDir::new("sample-cli", "file");
    let path = dir.join("prompt.txt");
    std::fs::write(&path, "First Citizen:\nBefore we proceed").unwrap();
    let common = [
        tiny_arg(),
        s("--temperature=0"),
        s("--num_samples=1"),
        s("--max_new_tokens=8"),
        s("--json"),
    ];
    let (from_file, _) = sample_ok(
        &[
            common.to_vec(),
            vec![format!("--start=FILE:{}", path.display())],
        ]
        .concat(),
    );
    let (inline, _) = sample_ok(
        &[
            common.to_vec(),
            vec![s("--start=First Citizen:\nBefore we proceed")],
        ]
        .concat(),
    );
    assert_eq!(from_file, inline);
    assert_eq!(
        json_lines(&from_file)[0]["prompt"],
        "First Citizen:\nBefore we proceed"
    );

    let missing = dir.join("nope.txt");
    let (r, out, _) = sample(
        &[
            common.to_vec(),
            vec![format!("--start=FILE:{}", missing.display())],
        ]
        .concat(),
    );
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("FILE:") && e.contains("nope.txt") && e.contains("cannot read"),
        "{e}"
    );
    assert!(out.is_empty());
}

#[test]
fn empty_and_overlong_prompts() {
    // GPT-2 vocabulary: an empty prompt starts from <|endoftext|>.
    let (out, err) = sample_ok(&[
        tiny_arg(),
        s("--start="),
        s("--num_samples=1"),
        s("--max_new_tokens=5"),
        s("--json"),
    ]);
    let r = &json_lines(&out)[0];
    assert_eq!(ids(&r["prompt_ids"]), vec![50256]);
    assert_eq!(ids(&r["generated_ids"]).len(), 5);
    assert!(err.contains("empty prompt"), "{err}");
    // tiny-gpt2's context is 128 tokens: a longer prompt is cropped, with a note.
    let long = "To be, or not to be, that is the question. ".repeat(20);
    let (out, err) = sample_ok(&[
        tiny_arg(),
        format!("--start={long}"),
        s("--temperature=0"),
        s("--num_samples=1"),
        s("--max_new_tokens=4"),
        s("--json"),
    ]);
    let r = &json_lines(&out)[0];
    assert!(ids(&r["prompt_ids"]).len() > 128);
    assert_eq!(ids(&r["generated_ids"]).len(), 4);
    assert!(err.contains("last 128"), "{err}");
}

#[test]
fn bad_sources_give_clear_errors() {
    let dir = TempDir::new("sample-cli", "bad");
    let missing = dir.join("no-such-run");
    let (r, _, _) = sample(&[format!("--out_dir={}", missing.display())]);
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("--out_dir") && e.contains("no-such-run") && e.contains("train"),
        "{e}"
    );

    let (r, _, _) = sample(&[format!("--out_dir={}", dir.display())]);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("no checkpoint"), "{e}");

    let (r, _, _) = sample(&[s("--init_from=gpt3")]);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("gpt2") && e.contains("gpt3"), "{e}");

    let (r, _, _) = sample(&[tiny_arg(), s("--top_p=1.5")]);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("top_p"), "{e}");

    let (r, _, _) = sample(&[tiny_arg(), s("--early_stopping=maybe")]);
    assert!(format!("{:#}", r.unwrap_err()).contains("never"));
}

/// A small character-level checkpoint trained on nothing, its dataset at data/chars/.
fn char_checkpoint(root: &std::path::Path) -> PathBuf {
    let vocab = CharVocab::from_text("abcdefgh \n");
    let data = root.join("data");
    std::fs::create_dir_all(data.join("chars")).unwrap();
    std::fs::write(data.join("chars/meta.json"), vocab.to_meta_json()).unwrap();
    let cfg = nanogpt::config::GptConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        block_size: 16,
        vocab_size: vocab.vocab_size(),
        pad_vocab: true,
        bias: true,
        dropout: 0.0,
        arch: Default::default(),
    };
    let model = CpuEngine::new(Gpt::new(cfg, 1).unwrap());
    let train = TrainConfig {
        dataset: "chars".into(),
        data_dir: data.display().to_string(),
        ..TrainConfig::default()
    };
    let out = root.join("out");
    let opt = nanogpt::engine::Engine::optimizer_state(&model);
    nanogpt::checkpoint::save(&out.join("best"), &model, &opt, &train, 1, 9.0, 1).unwrap();
    out
}

#[test]
fn own_checkpoint_uses_its_datasets_vocabulary() {
    let root = TempDir::new("sample-cli", "ckpt");
    let out_dir = char_checkpoint(&root);
    let args = |extra: &[String]| {
        let mut a = vec![format!("--out_dir={}", out_dir.display())];
        if !extra.iter().any(|x| x.starts_with("--start=")) {
            a.push(s("--start=abc"));
        }
        a.extend([s("--num_samples=2"), s("--max_new_tokens=20")]);
        a.extend_from_slice(extra);
        a
    };
    let (out, _) = sample_ok(&args(&[]));
    let samples: Vec<&str> = out.split(&format!("\n{SEPARATOR}\n")).collect();
    assert_eq!(samples.len(), 3, "{out:?}");
    for sm in &samples[..2] {
        assert!(sm.starts_with("abc"));
        assert_eq!(sm.chars().count(), 23, "{sm:?}: one character per token");
        assert!(sm.chars().all(|c| "abcdefgh \n".contains(c)));
    }
    // The same checkpoint through --init_from=DIR.
    let (same, _) = sample_ok(&[
        format!("--init_from={}", out_dir.join("best").display()),
        s("--start=abc"),
        s("--num_samples=2"),
        s("--max_new_tokens=20"),
    ]);
    assert_eq!(same, out);
    // A character outside the vocabulary.
    let (r, _, _) = sample(&args(&[s("--start=xyz")]));
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("cannot encode --start") && e.contains('x'),
        "{e}"
    );
    // An empty prompt has nothing to start from with characters.
    let (r, _, _) = sample(&args(&[s("--start=")]));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("at least one character"), "{e}");
    // The dataset moved: a clear error, then --data_dir finds it.
    let moved = root.join("elsewhere");
    std::fs::rename(root.join("data"), &moved).unwrap();
    let (r, _, _) = sample(&args(&[]));
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("--data_dir") && e.contains("chars") && e.contains("meta.json"),
        "{e}"
    );
    let (again, _) = sample_ok(&args(&[format!("--data_dir={}", moved.display())]));
    assert_eq!(again, out);
}

#[test]
fn repetition_table_on_tiny_gpt2() {
    let run = |fmt: &[&str]| {
        let mut a: Vec<String> = vec![
            tiny_arg(),
            s("--settings=greedy,repetition_penalty"),
            s("--max_new_tokens=64"),
        ];
        a.extend(fmt.iter().map(|x| x.to_string()));
        let args = RepetitionArgs::parse_from(&a).unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let report = run_repetition(&args, &mut out, &mut err).unwrap();
        (report, String::from_utf8(out).unwrap())
    };
    let (report, md) = run(&[]);
    for col in [
        "| setting |",
        "rep-2",
        "rep-3",
        "rep-4",
        "distinct-2",
        "distinct-3",
        "distinct-4",
        "seq-rep-4",
        "ends in loop",
        "mean log p",
    ] {
        assert!(md.contains(col), "missing column {col}:\n{md}");
    }
    assert!(
        md.contains("| greedy |") && md.contains("| repetition_penalty |"),
        "{md}"
    );
    assert_eq!(report.rows.len(), 2);
    let (greedy, penalty) = (&report.rows[0].stats, &report.rows[1].stats);
    assert_eq!(greedy.samples, 6, "one greedy sample per built-in prompt");
    assert_eq!(greedy.tokens, 6 * 64);
    // tiny-gpt2 loops under greedy decoding; the CTRL penalty breaks the loops.
    assert!(greedy.loop_share >= 0.5, "{md}");
    assert!(greedy.loop_share > penalty.loop_share, "{md}");
    assert!(greedy.rep_4 > 2.0 * penalty.rep_4, "{md}");
    assert!(greedy.distinct_4 < penalty.distinct_4, "{md}");
    assert!(greedy.mean_logprob.unwrap() < 0.0);

    let (_, csv) = run(&["--csv"]);
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("setting,description,samples,tokens,rep_2"));
    assert_eq!(lines.count(), 2);
    let (_, json) = run(&["--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["rows"][1]["setting"], "repetition_penalty");
    assert!(v["rows"][0]["loop_share"].as_f64().unwrap() >= 0.5);
}

/// `repetition --dtype` measures the same settings with bf16 or int8 weights (tiny-gpt2's
/// greedy loops do not depend on the weights' precision), and refuses what it does not know.
#[test]
fn repetition_takes_a_dtype() {
    for dtype in ["bfloat16", "int8"] {
        let args = RepetitionArgs::parse_from([
            tiny_arg(),
            s("--settings=greedy"),
            s("--max_new_tokens=64"),
            format!("--dtype={dtype}"),
        ])
        .unwrap();
        let report = run_repetition(&args, &mut Vec::new(), &mut Vec::new()).unwrap();
        assert_eq!(report.rows[0].stats.tokens, 6 * 64, "{dtype}");
        assert!(report.rows[0].stats.loop_share >= 0.5, "{dtype}");
    }
    let args = RepetitionArgs::parse_from([tiny_arg(), s("--dtype=int4")]).unwrap();
    let e = format!(
        "{:#}",
        run_repetition(&args, &mut Vec::new(), &mut Vec::new()).unwrap_err()
    );
    assert!(e.contains("--dtype=int4"), "{e}");
}

#[test]
fn repetition_rejects_unknown_settings_and_bad_prompt_files() {
    let args = RepetitionArgs::parse_from([tiny_arg(), s("--settings=greedy,nonsense")]).unwrap();
    let e = format!(
        "{:#}",
        run_repetition(&args, &mut Vec::new(), &mut Vec::new()).unwrap_err()
    );
    assert!(
        e.contains("nonsense") && e.contains("repetition_penalty"),
        "{e}"
    );
    let args = RepetitionArgs::parse_from([tiny_arg(), s("--settings=temperature=hot")]).unwrap();
    let e = format!(
        "{:#}",
        run_repetition(&args, &mut Vec::new(), &mut Vec::new()).unwrap_err()
    );
    assert!(e.contains("temperature=hot"), "{e}");
    let args =
        RepetitionArgs::parse_from([tiny_arg(), s("--prompts=/no/such/prompts.txt")]).unwrap();
    let e = format!(
        "{:#}",
        run_repetition(&args, &mut Vec::new(), &mut Vec::new()).unwrap_err()
    );
    assert!(
        e.contains("--prompts") && e.contains("one prompt per line"),
        "{e}"
    );
}

/// The flags of issue 18 reach generation: each run's ids equal the reference of
/// tests/data/decoding_refs.json for the prompt "ROMEO:" (its EOS, if any, ends the sample).
#[test]
fn issue_18_flags_match_the_decoding_references() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/decoding_refs.json");
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let romeo = serde_json::json!([33676, 4720, 25]);
    let find = |section: &str, pick: &dyn Fn(&Value) -> bool| -> Vec<Vec<u64>> {
        let case = refs[section]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["prompt_ids"] == romeo && pick(c))
            .unwrap_or_else(|| panic!("no {section} reference"));
        case["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect()
    };
    let setting = |name: &'static str| move |c: &Value| c["setting"] == name;
    let kwarg = |key: &'static str, v: f64| move |c: &Value| c["kwargs"][key].as_f64() == Some(v);
    let cases: Vec<(Vec<&str>, Vec<Vec<u64>>)> = vec![
        (
            vec![
                "--bad_words=ids:1870,263",
                "--bad_words=ids:11,198",
                "--bad_words=ids:13",
                "--max_new_tokens=30",
            ],
            find("generations", &setting("bad_words")),
        ),
        (
            vec![
                "--sequence_bias=ids:198=-3",
                "--sequence_bias=ids:11,290=2.5",
                "--sequence_bias=ids:262=1",
                "--max_new_tokens=30",
            ],
            find("generations", &setting("sequence_bias")),
        ),
        (
            vec![
                "--exponential_decay_length_penalty=4,1.6",
                "--stop_at_eot=true",
                "--max_new_tokens=30",
            ],
            find("generations", &setting("length_decay")),
        ),
        (
            vec![
                "--num_beams=4",
                "--num_beam_groups=2",
                "--diversity_penalty=1",
                "--num_return_sequences=4",
                "--max_new_tokens=20",
            ],
            find("group_beam", &kwarg("diversity_penalty", 1.0)),
        ),
        (
            vec!["--penalty_alpha=0.3", "--top_k=8", "--max_new_tokens=30"],
            find("contrastive", &kwarg("penalty_alpha", 0.3)),
        ),
    ];
    for (flags, mut want) in cases {
        let mut args = vec![
            tiny_arg(),
            s("--start=ROMEO:"),
            s("--temperature=0"),
            s("--num_samples=1"),
            s("--json"),
            s("--stop_at_eot=false"),
        ];
        args.extend(flags.iter().map(|f| s(f)));
        let (out, _) = sample_ok(&args);
        let recs = json_lines(&out);
        for (r, w) in recs.iter().zip(&mut want) {
            if w.last() == Some(&50256) {
                w.pop();
                assert_eq!(r["finish_reason"], "eot", "{flags:?}");
            }
        }
        let got: Vec<Vec<u64>> = recs.iter().map(|r| ids(&r["generated_ids"])).collect();
        assert_eq!(got, want, "{flags:?}");
    }
    // Wrong values are one-line errors that name the option.
    for (flag, needle) in [
        ("--sequence_bias=the", "TEXT=BIAS"),
        ("--bad_words=ids:1,x", "ids:"),
        ("--bad_words=ids:99999999", "outside the vocabulary"),
        ("--exponential_decay_length_penalty=3", "START,FACTOR"),
        ("--penalty_alpha=0.6", "top_k"),
        ("--epsilon_cutoff=1.5", "epsilon_cutoff"),
    ] {
        let (r, _, _) = sample(&[
            tiny_arg(),
            s("--temperature=0"),
            s("--top_k=0"),
            s("--max_new_tokens=2"),
            s(flag),
        ]);
        let e = format!("{:#}", r.expect_err(flag));
        assert!(e.contains(needle), "{flag}: {e}");
    }
}

const JULIET: &str = "--start=JULIET:\\nO Romeo, Romeo! wherefore art thou Romeo?\\n";

#[test]
fn loop_guard_reports_where_it_fired() {
    let base = vec![
        tiny_arg(),
        nanogpt::sample::options::unescape(JULIET),
        s("--temperature=0"),
        s("--num_samples=1"),
        s("--max_new_tokens=100"),
        s("--json"),
    ];
    let (out, _) = sample_ok(&[base.clone(), vec![s("--loop_guard=stop")]].concat());
    let r = &json_lines(&out)[0];
    assert_eq!(r["finish_reason"], "loop", "{r}");
    let e = &r["loop_guard"][0];
    assert_eq!(e["action"], "stop");
    let (pos, span) = (e["position"].as_u64().unwrap(), e["span"].as_u64().unwrap());
    assert_eq!(ids(&r["generated_ids"]).len() as u64, pos + 3 * span, "{r}");
    let (out, _) = sample_ok(&[base.clone(), vec![s("--loop_guard=backtrack")]].concat());
    let r = &json_lines(&out)[0];
    assert_eq!(r["finish_reason"], "length");
    assert_eq!(r["loop_guard"][0]["action"], "backtrack", "{r}");
    // Off: no loop_guard field at all.
    let (out, _) = sample_ok(&base);
    assert!(json_lines(&out)[0].get("loop_guard").is_none());
    let (r, _, _) = sample(&[base, vec![s("--loop_guard=sometimes")]].concat());
    assert!(format!("{:#}", r.unwrap_err()).contains("off, stop or backtrack"));
}

#[test]
fn loop_guard_backtrack_streams_only_what_it_keeps() {
    let base = vec![
        tiny_arg(),
        nanogpt::sample::options::unescape(JULIET),
        s("--temperature=0.3"),
        s("--top_k=5"),
        s("--num_samples=3"),
        s("--max_new_tokens=70"),
        s("--loop_guard=backtrack"),
    ];
    let (json_out, _) = sample_ok(&[base.clone(), vec![s("--json")]].concat());
    let recs = json_lines(&json_out);
    assert!(recs.iter().any(|r| r.get("loop_guard").is_some()));
    let expected: String = recs
        .iter()
        .map(|r| {
            format!(
                "{}{}\n{SEPARATOR}\n",
                r["prompt"].as_str().unwrap(),
                r["text"].as_str().unwrap()
            )
        })
        .collect();
    for batch in ["0", "2"] {
        let (out, _) = sample_ok(&[base.clone(), vec![format!("--batch_size={batch}")]].concat());
        assert_eq!(out, expected, "batch_size {batch}");
    }
}

#[test]
fn repetition_with_the_loop_guard() {
    let args = RepetitionArgs::parse_from([
        tiny_arg(),
        s("--settings=greedy,loop_guard=backtrack,loop_guard=stop+loop_guard_repeats=4"),
        s("--max_new_tokens=64"),
    ])
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let report = run_repetition(&args, &mut out, &mut err).unwrap();
    let [greedy, backtrack, stop] = [0, 1, 2].map(|i| &report.rows[i].stats);
    // At 64 tokens one backtracked sample is cut after two copies of a new loop: the guard
    // waits for three, the metric counts two (at 128 tokens: none of 6, see the docs).
    assert!(greedy.loop_share >= 0.5);
    assert!(backtrack.loop_share <= greedy.loop_share / 2.0);
    assert_eq!(backtrack.tokens, greedy.tokens);
    assert!(backtrack.mean_logprob.unwrap() > greedy.mean_logprob.unwrap() - 0.5);
    assert!(stop.tokens < greedy.tokens);
    assert_eq!(
        report.rows[2].description,
        "greedy, loop_guard stop, loop_guard_repeats 4"
    );
}
