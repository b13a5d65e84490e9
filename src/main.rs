//! The `nanogpt` binary: the command line is [`cli`].

mod cli;

#[global_allocator]
static ALLOCATOR: nanogpt::perf::CountingAlloc = nanogpt::perf::CountingAlloc;

fn main() {
    match cli::run() {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
