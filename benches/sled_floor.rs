//! What sled 0.34.7 itself costs for the records a payment leaves live, without the daemon: the
//! floor under the store's figures in `cargo bench --bench load -- --preload N`.
//!
//! `cargo bench --bench sled_floor -- [--payments N] [--cache-bytes N]` writes N payments' live
//! records straight into one sled tree — the seven keys of the sizes the daemon's preload reports
//! (`live records: … per payment`), each written once, in time order, no intent records, no
//! removals, no flush until the end — then reopens the folder in a process of its own and reads
//! one payment in 97. It prints the bytes on disk per payment, the time to open, and the reopened
//! process's RSS after opening and after the reads: what sled alone needs to hold such a store.
//! Like the daemon, with the daemon's allocator and without transparent huge pages.

// Wall-clock times and ratios of bytes, never money: the workspace's lint against floats and
// std's clock (for tests on tokio's paused clock) does not apply to this program.
#![allow(clippy::disallowed_types)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Each live record of a payment: its key's prefix, key length and value length (bytes), as the
/// daemon's preload reports them for 1M payments (`SledStore::footprint`).
const RECORDS: [(u8, usize, usize); 7] = [
    (b'p', 37, 393), // the payment
    (b'q', 37, 408), // its quote
    (b'j', 46, 198), // its journal entry
    (b'D', 9, 135),  // the delivered event's header
    (b'i', 28, 103), // the request claim
    (b'c', 45, 0),   // the day index
    (b'u', 37, 36),  // the quote's use claim
];

/// One payment in this many is read after the reopen.
const READ_EVERY: u64 = 97;

fn open(dir: &Path, cache_bytes: u64) -> sled::Tree {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .expect("sled opens");
    db.open_tree("records").expect("the tree opens")
}

fn key(prefix: u8, len: usize, payment: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend(format!("{payment:0>width$}", width = len - 1).bytes());
    k
}

/// VmRSS and VmHWM of this process, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn reopen(dir: &Path, payments: u64, cache_bytes: u64) {
    let t = Instant::now();
    let tree = open(dir, cache_bytes);
    let opened = t.elapsed();
    let (open_rss, open_peak) = rss();
    let mut found = 0;
    for p in (0..payments).step_by(READ_EVERY as usize) {
        found += u64::from(tree.get(key(b'p', 37, p)).expect("a read").is_some());
    }
    assert_eq!(found, payments.div_ceil(READ_EVERY), "every payment read is there");
    let (read_rss, read_peak) = rss();
    println!(
        "reopened in {:.2} s: RSS {open_rss:.1} MiB (peak {open_peak:.1}); after reading {found} \
         payments {read_rss:.1} MiB (peak {read_peak:.1})",
        opened.as_secs_f64()
    );
}

fn main() {
    // As the daemon runs (bridge/main.rs): its RSS is what this compares with.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .map(|v| v.parse::<u64>().unwrap_or_else(|e| panic!("{name} {v}: {e}")))
    };
    let payments = arg("--payments").unwrap_or(1_000_000);
    let cache_bytes = arg("--cache-bytes").unwrap_or(1 << 20);
    if let Some(i) = argv.iter().position(|a| a == "--reopen") {
        return reopen(Path::new(&argv[i + 1]), payments, cache_bytes);
    }
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("db");
    let live: usize = RECORDS.iter().map(|(_, k, v)| k + v).sum();
    println!(
        "sled 0.34.7 alone: {payments} payments x {} records ({live} bytes live each), cache {cache_bytes} bytes",
        RECORDS.len()
    );
    let t = Instant::now();
    {
        let tree = open(&path, cache_bytes);
        for p in 0..payments {
            for (prefix, k, v) in RECORDS {
                tree.insert(key(prefix, k, p), vec![(p % 251) as u8; v]).expect("a write");
            }
        }
        tree.flush().expect("a flush");
    }
    let written = t.elapsed();
    let bytes: u64 = std::fs::read_dir(&path)
        .expect("the store's folder")
        .chain(std::fs::read_dir(path.join("blobs")).expect("its blobs"))
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "written in {:.1} s; {} bytes on disk per payment ({:.2}x the live bytes)",
        written.as_secs_f64(),
        bytes / payments.max(1),
        bytes as f64 / (payments.max(1) as f64 * live as f64)
    );
    let status = Command::new(std::env::current_exe().expect("this program"))
        .args(["--payments", &payments.to_string(), "--cache-bytes", &cache_bytes.to_string()])
        .arg("--reopen")
        .arg(&path)
        .status()
        .expect("the reopening process runs");
    assert!(status.success(), "the reopening process failed: {status}");
}
