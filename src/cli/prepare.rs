//! `nanogpt prepare ...`: the datasets' flags, and the calls into [`nanogpt::data`] and
//! [`nanogpt::arithmetic`].

use super::knobs::Knobs;
use super::output::Interrupt;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use nanogpt::arithmetic::{prepare_arithmetic, ArithmeticOptions, Format, Op};
use nanogpt::data::dataset::dataset_dir;
use nanogpt::data::{DocumentOptions, TextTokenizer};
use std::path::PathBuf;

/// The char-rnn tiny Shakespeare text that nanoGPT downloads.
const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

#[derive(Subcommand)]
pub enum PrepareCommand {
    /// Tiny Shakespeare by character (nanoGPT's data/shakespeare_char).
    #[command(name = "shakespeare_char")]
    ShakespeareChar(ShakespeareArgs),
    /// Tiny Shakespeare with GPT-2 BPE (nanoGPT's data/shakespeare).
    Shakespeare(ShakespeareArgs),
    /// Arithmetic problems (+ - * /), character level, with a held-out test set.
    Arithmetic(ArithmeticArgs),
    /// Your own text: files or folders of .txt (one document each), .jsonl and .parquet (one per
    /// line / row).
    Text(TextArgs),
    /// OpenWebText (or any Hugging Face text dataset) streamed shard by shard with GPT-2 BPE:
    /// about one shard of extra disk, resumable (rerun the same command after an interruption).
    Openwebtext(OpenWebTextArgs),
}

#[derive(clap::Args)]
pub struct OpenWebTextArgs {
    /// The Hugging Face dataset (owner/name) whose parquet files to stream.
    #[arg(long, default_value = "Skylion007/openwebtext")]
    dataset: String,
    /// Branch, tag or commit of the dataset [default: main, else refs/convert/parquet].
    #[arg(long)]
    revision: Option<String>,
    /// The dataset split whose files to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// Only the files under this folder of the dataset (a configuration, e.g. plain_text).
    #[arg(long)]
    subset: Option<String>,
    /// Use these parquet / .jsonl / .txt files or folders instead of downloading.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    #[command(flatten)]
    out: TokenOutputArgs,
    /// Only the first N documents (a quick try).
    #[arg(long = "max_docs")]
    max_docs: Option<u64>,
    /// Forget an earlier (unfinished or finished) run in the output folder and start over.
    #[arg(long)]
    restart: bool,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "openwebtext")]
    name: String,
}

/// What `prepare text` and `prepare openwebtext` share: documents in, token files out.
#[derive(clap::Args)]
pub struct TokenOutputArgs {
    #[command(flatten)]
    docs: Knobs<DocumentOptions>,
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TextArgs {
    /// Files or folders (walked recursively: *.txt, *.jsonl, *.parquet).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// gpt2 (BPE, <|endoftext|> after each document), char (vocabulary from the text), or a
    /// sentencepiece tokenizer FILE: tokenizer.model, llama2.c's tokenizer.bin, or a folder
    /// holding one (BOS before each document, as llama2.c; copied into the dataset).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    #[command(flatten)]
    out: TokenOutputArgs,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "text")]
    name: String,
}

#[derive(clap::Args)]
pub struct ShakespeareArgs {
    /// The text to prepare; without it, tiny Shakespeare is downloaded to <dataset>/input.txt.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to download tiny Shakespeare from.
    #[arg(long, default_value = TINY_SHAKESPEARE_URL)]
    url: String,
    /// Put <dataset>/ under this directory instead of data/.
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
    /// shakespeare only: a Llama's sentencepiece tokenizer (tokenizer.model, llama2.c's
    /// tokenizer.bin, or a folder with one) instead of GPT-2 BPE; each split starts with BOS.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The dataset's name under data_dir [default: the command's name].
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct ArithmeticArgs {
    /// Operations, e.g. "+-" or "+-*/".
    #[arg(long, default_value = "+-")]
    ops: String,
    /// plain (123+45=168), reversed (answer digits least significant first: 123+45=861) or
    /// scratchpad (reversed, with multiplication's partial products written out, and division
    /// as fixed-width long division: 005/07=000,0,000,00;000,0,000,00;005,0,000,05;000r05).
    #[arg(long, default_value = "reversed")]
    format: String,
    #[arg(long = "min_digits", default_value_t = ArithmeticOptions::default().min_digits)]
    min_digits: usize,
    #[arg(long = "max_digits", default_value_t = ArithmeticOptions::default().max_digits)]
    max_digits: usize,
    /// Largest divisor length in digits.
    #[arg(long = "max_divisor_digits", default_value_t = ArithmeticOptions::default().max_divisor_digits)]
    max_divisor_digits: usize,
    /// Training problems per operation.
    #[arg(long = "train_per_op", default_value_t = ArithmeticOptions::default().train_per_op)]
    train_per_op: usize,
    /// Division gets this many times train_per_op training problems (3: half of all lines
    /// with + - * /, the measured recipe).
    #[arg(long = "div_train_factor", default_value_t = ArithmeticOptions::default().div_train_factor)]
    div_train_factor: usize,
    /// Multiplication gets this many times train_per_op training problems (1 in
    /// config/arithmetic_all.toml's recipe: with its running sums x reached 99.5% at 1, and 2
    /// took problems from the others).
    #[arg(long = "mul_train_factor", default_value_t = ArithmeticOptions::default().mul_train_factor)]
    mul_train_factor: usize,
    /// Relative frequency of each dividend length in training, e.g. 0.1,0.3,0.6 for 1 to 3
    /// digits (the default: length n weighs n(n+1)/2).
    #[arg(long = "dividend_weights", value_delimiter = ',')]
    dividend_weights: Option<Vec<f64>>,
    /// Held-out test problems per operation.
    #[arg(long = "test_per_op", default_value_t = ArithmeticOptions::default().test_per_op)]
    test_per_op: usize,
    #[arg(long, default_value_t = ArithmeticOptions::default().seed)]
    seed: u64,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "arithmetic")]
    name: String,
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
}

pub fn prepare(dataset: PrepareCommand) -> Result<()> {
    match dataset {
        PrepareCommand::ShakespeareChar(args) => prepare_shakespeare("shakespeare_char", args)?,
        PrepareCommand::Shakespeare(args) => prepare_shakespeare("shakespeare", args)?,
        PrepareCommand::Text(args) => {
            let mut opts = nanogpt::data::TextPrepareOptions::new(
                args.input,
                dataset_dir(&args.out.data_dir, &args.name)?,
            );
            opts.tokenizer = args.tokenizer.parse()?;
            opts.docs = args.out.docs.parse()?;
            let summary = nanogpt::data::prepare_text(&opts)?;
            for warning in summary.warnings() {
                eprintln!("warning: {warning}");
            }
            if args.out.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                let tokenizer = match &summary.tokenizer {
                    TextTokenizer::Gpt2 => "GPT-2 BPE".to_string(),
                    TextTokenizer::Char => "characters".to_string(),
                    TextTokenizer::Llama(path) => format!("sentencepiece {}", path.display()),
                };
                println!(
                    "{}: {} documents, {} train tokens, {} val tokens ({tokenizer}, vocab {}), {:.1} MB/s",
                    opts.out_dir.display(),
                    summary.documents,
                    summary.train_tokens,
                    summary.val_tokens,
                    summary.vocab_size,
                    summary.mb_per_s
                );
            }
        }
        PrepareCommand::Openwebtext(args) => prepare_openwebtext(args)?,
        PrepareCommand::Arithmetic(args) => {
            let ops = args
                .ops
                .chars()
                .map(|c| {
                    Op::from_symbol(c)
                        .with_context(|| format!("--ops: '{c}' is not one of + - * /"))
                })
                .collect::<Result<Vec<_>>>()?;
            let format = Format::parse(&args.format).with_context(|| {
                format!(
                    "--format: '{}' is not plain, reversed or scratchpad",
                    args.format
                )
            })?;
            let opts = ArithmeticOptions {
                ops,
                format,
                min_digits: args.min_digits,
                max_digits: args.max_digits,
                max_divisor_digits: args.max_divisor_digits,
                train_per_op: args.train_per_op,
                div_train_factor: args.div_train_factor,
                mul_train_factor: args.mul_train_factor,
                dividend_weights: args.dividend_weights,
                test_per_op: args.test_per_op,
                seed: args.seed,
            };
            let out = dataset_dir(&args.data_dir, &args.name)?;
            let s = prepare_arithmetic(&opts, &out)?;
            println!(
                "{}: {} training problems ({} tokens), {} held-out test problems, {} longer (out-of-distribution) ones",
                out.display(),
                s.train_problems,
                s.train_tokens,
                s.test_problems,
                s.ood_problems
            );
        }
    }
    Ok(())
}

fn prepare_openwebtext(args: OpenWebTextArgs) -> Result<()> {
    use nanogpt::data::hub::HubDataset;
    use nanogpt::data::{StreamPrepareOptions, StreamSource};
    use nanogpt::hf::Hub;
    let source = if !args.input.is_empty() {
        StreamSource::Local(args.input)
    } else {
        let hub = Hub::from_env();
        if hub.offline {
            anyhow::bail!("HF_HUB_OFFLINE is set, so {} cannot be downloaded: pass --input DIR with its parquet files", args.dataset);
        }
        if args.dataset.split('/').count() != 2 {
            anyhow::bail!("--dataset: '{}' is not owner/name", args.dataset);
        }
        StreamSource::Hub(HubDataset {
            endpoint: hub.endpoint,
            repo: args.dataset,
            revision: args.revision,
            split: args.split,
            subset: args.subset,
            token: hub.token,
        })
    };
    let mut opts = StreamPrepareOptions::new(source, dataset_dir(&args.out.data_dir, &args.name)?);
    opts.docs = args.out.docs.parse()?;
    opts.max_docs = args.max_docs;
    opts.restart = args.restart;
    let interrupt =
        Interrupt::install("stopping after this batch; the files done so far are kept")?;
    let s = nanogpt::data::prepare_stream(&opts, &interrupt.stop)?;
    for warning in s.warnings() {
        eprintln!("warning: {warning}");
    }
    if args.out.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if s.already_complete {
        println!(
            "{} is already prepared ({} documents, {} train tokens, {} val tokens); pass --restart to prepare it again",
            s.out_dir.display(),
            s.documents,
            s.train_tokens,
            s.val_tokens
        );
    } else {
        println!(
            "{}: {} documents from {} files, {} train tokens, {} val tokens; {:.1} MB of text at {:.1} MB/s on {} threads",
            s.out_dir.display(),
            s.documents,
            s.sources,
            s.train_tokens,
            s.val_tokens,
            s.text_bytes as f64 / 1e6,
            s.text_mb_per_s,
            s.threads
        );
    }
    Ok(())
}

fn prepare_shakespeare(command: &str, args: ShakespeareArgs) -> Result<()> {
    let name = args.name.as_deref().unwrap_or(command);
    let out = dataset_dir(&args.data_dir, name)?;
    let input = match args.input {
        Some(path) => path,
        None => {
            let path = out.join("input.txt");
            if !path.is_file() {
                eprintln!("downloading tiny Shakespeare to {}", path.display());
                nanogpt::download::download(
                    &args.url,
                    &path,
                    "download input.txt yourself and pass --input=path/to/input.txt",
                )?;
            }
            path
        }
    };
    let summary = match (command, &args.tokenizer) {
        ("shakespeare_char", None) => nanogpt::data::prepare_shakespeare_char(&input, &out)?,
        ("shakespeare_char", Some(_)) => bail!(
            "--tokenizer is for `prepare shakespeare` (subword tokens); shakespeare_char builds its own character vocabulary"
        ),
        (_, Some(tok)) => nanogpt::data::prepare_shakespeare_llama(&input, &out, tok)?,
        (_, None) => nanogpt::data::prepare_shakespeare_bpe(&input, &out)?,
    };
    println!(
        "{}: vocab {}, {} train tokens, {} val tokens",
        out.display(),
        summary.vocab_size,
        summary.train_tokens,
        summary.val_tokens
    );
    Ok(())
}
