use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: the daemon's allocations are many, small and short-lived
/// (requests, TLS records, sled's nodes), and glibc's malloc took a fifth of its CPU. Measured in
/// BENCHMARKS.md ("Storage, second round"): more transactions per CPU-second, at the cost of a
/// larger resident set.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    qrbridge::cli::run(qrbridge::cli::Cli::parse())
}

/// Transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless the
/// operator said otherwise through mimalloc's own `MIMALLOC_ALLOW_THP` (which mimalloc applies
/// itself). mimalloc asks for 2 MiB pages for its large regions (`madvise(MADV_HUGEPAGE)`,
/// honoured when `transparent_hugepage` is `madvise` or `always`), so a region partly in use is
/// resident whole. Measured in BENCHMARKS.md ("Huge pages"): 29–68 MiB less peak RSS under load,
/// 28–38 MiB less idle with a million payments stored, no CPU difference beyond the runs' spread.
/// A kernel without the call keeps huge pages; nothing else changes.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}
