//! The `nanogpt` binary: the command line is [`cli`].

mod cli;

#[global_allocator]
static ALLOCATOR: nanogpt::perf::CountingAlloc = nanogpt::perf::CountingAlloc;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
