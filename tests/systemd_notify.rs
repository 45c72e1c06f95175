//! `qrbridge serve` tells systemd what it is doing. The test stands in for systemd: it binds the
//! notify socket (a Unix datagram socket in a temporary folder), runs the real binary on its
//! embedded defaults with `NOTIFY_SOCKET` and `WATCHDOG_USEC` (2 s) set, and reads what arrives:
//! READY=1 with a STATUS naming the addresses the daemon printed, WATCHDOG=1 again and again, and
//! after SIGTERM STOPPING=1, with no ping after it, then exit 0. Every wait is bounded by the
//! socket's read timeout or a channel's receive timeout.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The first start makes the development PKI, in a debug build.
const START_BOUND: Duration = Duration::from_secs(120);
/// Anything else: pings every second, a drain of an idle daemon.
const BOUND: Duration = Duration::from_secs(30);

/// The daemon, killed if the test ends before it has exited.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads datagrams until one carries `line`; returns it and the ones before it.
fn until(sock: &UnixDatagram, line: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut before = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no {line} within {:?} (got {before:?}): {e}", sock.read_timeout().unwrap())
        });
        let message: Vec<String> =
            String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect();
        if message.iter().any(|l| l == line) {
            return (message, before);
        }
        before.push(message);
    }
}

#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["serve", "--data-dir", "var", "--partner-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--acquirer-addr", "127.0.0.1:0"])
        .args(["--ops-addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &path)
        // Every 2 s, so pings every second. No WATCHDOG_PID: the child's pid is not known before
        // it starts, and without one the watchdog is the receiving process's (sd-notify's rule,
        // and libsystemd's).
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qrbridge serve starts");
    let pid = child.id().to_string();
    let mut daemon = Daemon(Some(child));

    sock.set_read_timeout(Some(START_BOUND)).unwrap();
    let (ready, _) = until(&sock, "READY=1");
    let status = ready.iter().find_map(|l| l.strip_prefix("STATUS=")).expect("STATUS with READY");
    // READY=1 follows the printed addresses, so they can be read now without waiting.
    let stdout = daemon.0.as_mut().unwrap().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("qrbridge listening: ").map(str::to_owned))
        .expect("the listening line");
    assert_eq!(status, format!("listening: {listening}"));
    assert!(listening.contains("partner=https://127.0.0.1:"), "{listening}");

    // The watchdog is pinged, and again: it is a loop, not a single message.
    sock.set_read_timeout(Some(BOUND)).unwrap();
    until(&sock, "WATCHDOG=1");
    until(&sock, "WATCHDOG=1");

    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let (stopping, _) = until(&sock, "STOPPING=1");
    assert!(stopping.iter().any(|l| l.starts_with("STATUS=stopping")), "{stopping:?}");

    let mut child = daemon.0.take().unwrap();
    let (tx, rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = match rx.recv_timeout(BOUND) {
        Ok(exit) => exit.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("qrbridge serve did not exit within {BOUND:?} of SIGTERM");
        }
    };
    waiter.join().unwrap();
    assert!(exit.success(), "qrbridge serve exited with {exit}");
    drop(lines);

    // Nothing after STOPPING=1: the watchdog stopped before it was sent.
    sock.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut after = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(after.is_empty(), "after STOPPING=1: {after:?}");
}
