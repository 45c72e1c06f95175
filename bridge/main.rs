use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: the daemon's allocations are many, small and short-lived
/// (requests, TLS records, sled's nodes), and glibc's malloc took a fifth of its CPU. Measured in
/// BENCHMARKS.md ("Storage, second round"): more transactions per CPU-second, at the cost of a
/// larger resident set.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    qrbridge::cli::run(qrbridge::cli::Cli::parse())
}
