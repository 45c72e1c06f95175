//! The service files in dist/ work as shipped. The systemd unit: `systemd-analyze verify` accepts
//! it and says nothing about it (run on a copy whose ExecStart is the binary just built, since
//! verify wants the binary to exist; a planted typo shows that its warnings are seen), its
//! hardening rates "OK" in `systemd-analyze security`, and it gives a stop time to drain in. The
//! Grafana dashboard: it parses, takes its data source as an import input, and every `qrbridge_…`
//! metric it uses is listed in docs/metrics.md, so it cannot drift from the metrics.
//!
//! Without systemd-analyze the unit's checks fail when `CI=true` (CI installs systemd) and are
//! skipped, with a SKIP line, elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "dist/systemd/qrbridge.service";
const DASHBOARD: &str = "dist/grafana/qrbridge.json";
const INSTALLED_BINARY: &str = "/usr/local/bin/qrbridge";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// systemd-analyze and its version, or `None` (after failing under CI, or saying SKIP).
fn systemd_analyze(test: &str) -> Option<(PathBuf, u32)> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("systemd-analyze")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/systemd-analyze")])
        .find(|p| p.is_file());
    let Some(bin) = found else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing; CI must install it (apt-get install systemd)"
        );
        eprintln!("SKIP {test}: systemd-analyze is not installed (apt-get install systemd)");
        return None;
    };
    let out = Command::new(&bin).arg("--version").output().expect("systemd-analyze --version");
    let text = String::from_utf8_lossy(&out.stdout);
    // "systemd 252 (252.38-1~deb12u1)"
    let version = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("systemd-analyze --version said {text:?}"));
    Some((bin, version))
}

/// The unit as shipped, with ExecStart's binary replaced by the one cargo built, written as
/// `qrbridge.service` (verify wants a unit's name) into `dir`.
fn unit_copy(dir: &Path, unit: &str) -> PathBuf {
    let built = env!("CARGO_BIN_EXE_qrbridge");
    assert!(!built.contains(char::is_whitespace), "{built}: a path with spaces needs quoting");
    let exec_start = format!("ExecStart={INSTALLED_BINARY} ");
    assert_eq!(unit.matches(&exec_start).count(), 1, "one ExecStart, of {INSTALLED_BINARY}");
    let path = dir.join("qrbridge.service");
    std::fs::write(&path, unit.replace(&exec_start, &format!("ExecStart={built} "))).unwrap();
    path
}

/// `systemd-analyze verify` on `unit`: its exit status, and its stderr lines about our unit.
/// systemd reports a unit's problems (an unknown key, a value it cannot parse, a missing binary)
/// as lines naming the unit's file or name, and most with exit status 0 ("…, ignoring"): every
/// such line is a real warning. Lines about other units (a broken unit elsewhere on the host) are
/// printed but not held against ours.
fn verify(bin: &Path, version: u32, unit: &Path) -> (bool, Vec<String>) {
    let mut cmd = Command::new(bin);
    cmd.args(["verify", "--man=no"]);
    if version >= 250 {
        // Only our unit's own problems set the exit status, not those of units it orders after.
        cmd.arg("--recursive-errors=no");
    }
    let out = cmd.arg(unit).env("SYSTEMD_LOG_COLOR", "0").output().expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("systemd-analyze verify said:\n{stderr}");
    }
    let ours = stderr
        .lines()
        .filter(|l| l.contains(&*unit.to_string_lossy()) || l.contains("qrbridge.service"))
        .map(str::to_owned)
        .collect();
    (out.status.success(), ours)
}

#[test]
fn systemd_accepts_the_unit() {
    let Some((bin, version)) = systemd_analyze("systemd_accepts_the_unit") else { return };
    let unit = read(UNIT);
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_copy(dir.path(), &unit);
    let (ok, warnings) = verify(&bin, version, &copy);
    assert!(ok && warnings.is_empty(), "systemd-analyze verify: {warnings:#?}");

    // The warnings above are seen: a misspelled key is reported on a line naming the unit.
    let typo = unit.replacen("ProtectClock=yes", "ProtectClok=yes", 1);
    assert_ne!(typo, unit);
    let (_, warnings) = verify(&bin, version, &unit_copy(dir.path(), &typo));
    assert!(
        warnings.iter().any(|w| w.contains("ProtectClok")),
        "a planted typo went unseen: {warnings:#?}"
    );

    // Hardened: an exposure of 2.0 or less ("OK"; 1.6 as written, with systemd 252).
    if version >= 250 {
        let copy = unit_copy(dir.path(), &unit);
        let out = Command::new(&bin)
            .args(["security", "--no-pager", "--offline=yes", "--threshold=20"])
            .arg(&copy)
            .output()
            .expect("systemd-analyze security runs");
        let report = String::from_utf8_lossy(&out.stdout);
        let summary = report.lines().find(|l| l.contains("Overall exposure")).unwrap_or("");
        assert!(out.status.success(), "exposure above 2.0: {summary}\n{report}");
    } else {
        eprintln!("SKIP the exposure check: systemd {version} has no `security --offline`");
    }
}

/// The settings the operations guide relies on, whatever systemd thinks of the rest.
#[test]
fn the_unit_notifies_runs_as_its_own_user_and_has_time_to_drain() {
    let unit = read(UNIT);
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| -> &str {
        let values: Vec<&str> =
            settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect();
        assert_eq!(values.len(), 1, "{key}= is set once: {values:?}");
        values[0]
    };
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("User", "qrbridge"),
        ("Group", "qrbridge"),
        ("StateDirectory", "qrbridge"),
        ("ReadWritePaths", "/var/lib/qrbridge"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
    ] {
        assert_eq!(value(key), want, "{key}=");
    }
    assert!(settings.iter().all(|(k, _)| *k != "DynamicUser"), "the data folder must persist");
    // systemd's SIGKILL must not cut the drain short: the stop time covers the daemon's own
    // shutdown deadline, with room for the final flush.
    let stop_s: u64 = value("TimeoutStopSec").strip_suffix('s').unwrap().parse().unwrap();
    let drain_ms = qrbridge_config::Limits::default().shutdown_timeout_ms;
    assert!(stop_s * 1000 >= drain_ms + 10_000, "TimeoutStopSec={stop_s}s, drain {drain_ms} ms");
}

/// The metric names a text names: `qrbridge_` and lower-case letters, digits and underscores.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("qrbridge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_uses_only_documented_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel ids are unique");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no queries"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            exprs.push(t["expr"].as_str().unwrap_or_else(|| panic!("{title}: a query")).to_owned());
        }
    }

    // Documented: named in the first column of docs/metrics.md's table, with its type.
    let docs = read("docs/metrics.md");
    let documented: BTreeMap<String, String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .filter(|(name, _)| name.starts_with("qrbridge_"))
        .map(|(name, rest)| {
            let kind = rest.trim_start_matches([' ', '|']).split('|').next().unwrap_or("");
            (name.to_owned(), kind.trim().to_owned())
        })
        .collect();
    assert!(documented.len() >= 10, "docs/metrics.md's table: {documented:?}");
    // The queries, and the words around them (descriptions name metrics too). A histogram's
    // series are its name with `_bucket`, `_sum` and `_count`.
    let used = metric_names(&read(DASHBOARD));
    let undocumented: Vec<&String> = used
        .iter()
        .filter(|name| {
            let histogram = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .any(|base| documented.get(base).is_some_and(|k| k.starts_with("histogram")));
            !documented.contains_key(*name) && !histogram
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "the dashboard uses metrics docs/metrics.md does not list: {undocumented:?}"
    );
    // Every query reads at least one of them.
    for e in &exprs {
        assert!(!metric_names(e).is_empty() || e.starts_with("vector("), "{e}");
    }
}
