//! The treasury console in a real browser, against the real daemon: Debian's Chromium, headless,
//! driven by Playwright from npm (tests/console/browser.mjs), presenting the admin identity's
//! PKCS#12 file (written by `qrbridge::console::write_p12`) over real mTLS. Before the browser
//! starts, this test pays on a business day and parks those payments' webhook events (a manual
//! clock moved past their maximum age, the delivery worker's signal awaited); the browser then
//! opens every page, edits a spread and prices a quote with it, proposes a larger change that
//! only a second admin can approve, runs the day and downloads a statement, reconciles the
//! sandbox acquirer's file, replays a parked event, and is refused with a partner certificate
//! and without the console's token. This test checks each outcome against the daemon's own
//! state: the quote's price, the statement's lines, the event delivered and gone from the parked
//! list, the audit records with their admins.
//!
//! Chromium and `tests/console/node_modules` are installed by `.ci/run` under `CI=true`; without
//! them this test fails under CI and skips loudly elsewhere. Screenshots of each page go to the
//! test's temporary folder, or to `$QRBRIDGE_CONSOLE_SHOTS` when set (kept).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use qrbridge::console::{write_p12, DEV_P12_PASSWORD};
use qrbridge::store::Store;
use serde_json::{json, Value};
use support::daemon::{second_admin, Setup, TestDaemon, SECOND_ADMIN};
use support::flows::{code, pay_and_park, quote};
use support::webhook::Mode;

/// A safety net for signals, never a wait of its own.
const WAIT: Duration = Duration::from_secs(30);
/// The browser's whole run, at most.
const BROWSER_MAX: Duration = Duration::from_secs(300);
const START: &str = "2026-11-20T02:00:00Z";
/// The business day of START (Asia/Shanghai, cut-off 00:00).
const DAY: &str = "2026-11-20";

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// Chromium and Playwright, or why the test cannot run (fails under CI=true, skips elsewhere).
fn browser() -> Option<PathBuf> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let playwright = project().join("node_modules/playwright-core");
    let node = std::process::Command::new("node").arg("--version").output().is_ok();
    let missing: Vec<String> = [
        (!chromium.exists()).then(|| format!("{} (Debian's chromium)", chromium.display())),
        (!playwright.exists())
            .then(|| format!("{} (npm ci in tests/console)", playwright.display())),
        (!node).then(|| "node".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(chromium);
    }
    support::missing(&format!(
        "{} (the console's browser test needs them; .ci/run installs them)",
        missing.join(", ")
    ));
    None
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not text: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_changes_what_the_admin_api_changes() {
    let Some(chromium) = browser() else { return };
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(START.parse().unwrap()),
        webhooks: Some(Mode::FailAll),
        tweak: Box::new(second_admin),
    })
    .await;
    let dual = qrbridge_config::DualControl::default();
    d.daemon().treasury.set_dual_control(dual.clone());
    // The admin listener hands `/console/` to the console (bridge/admin.rs), and lists its
    // routes (for docs/admin-api.yaml and the metrics' route labels).
    for route in qrbridge::console::ROUTES {
        assert!(qrbridge::admin::ROUTES.contains(route), "{route:?} is not in admin::ROUTES");
    }
    let (s, page) = d.admin_client("admin").get("/console/rates").await;
    assert_eq!(s, StatusCode::OK, "the admin listener does not serve the console: {page}");
    let pki = d.pki();
    let p12 = pki.join("admin.p12");
    write_p12(&pki.join("admin.crt"), &pki.join("admin.key"), &p12, DEV_P12_PASSWORD).unwrap();

    // Two payments on DAY, their events parked; the day closes as the clock moves.
    let paid = pay_and_park(&d, &["console-1", "console-2"], 2_372, WAIT).await;
    let parked = d.daemon().store().parked().await.unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    let replayed = parked
        .iter()
        .find(|(_, p)| p.event.payment_id == paid[0])
        .map(|(_, p)| p.event.event_id.clone())
        .unwrap();
    // The endpoint takes what is replayed from now on.
    d.hooks.as_ref().unwrap().set_mode(Mode::Ack);

    // The sandbox acquirer's own file for the day.
    let mut acquirer_file = String::from("instruction_id,amount,currency,status,refund_ids\n");
    for (id, amount, status) in d.daemon().sandbox.as_ref().unwrap().instructions() {
        let status = serde_json::to_value(status).unwrap();
        acquirer_file +=
            &format!("{id},{},CNY,{},\n", amount.to_major_string(), status.as_str().unwrap());
    }
    let work = tempfile::tempdir().unwrap();
    let acquirer_path = work.path().join("sandbox-2026-11-20.csv");
    std::fs::write(&acquirer_path, &acquirer_file).unwrap();
    let shots = match std::env::var_os("QRBRIDGE_CONSOLE_SHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => work.path().join("screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();

    // The price of a quote before the edit.
    let (s, before) = quote(&d.client("partner-demo"), &code(None), Some(10_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{before}");

    let admin_url = format!("https://{}", d.daemon().admin_addr);
    let settings = json!({
        "chromium": chromium,
        "admin_url": admin_url,
        "partner_url": format!("https://{}", d.addr()),
        "p12": p12, "passphrase": DEV_P12_PASSWORD,
        "admin2_cert": pki.join(format!("{SECOND_ADMIN}.crt")),
        "admin2_key": pki.join(format!("{SECOND_ADMIN}.key")),
        "partner_cert": pki.join("partner-demo.crt"), "partner_key": pki.join("partner-demo.key"),
        "out": shots,
        "partner": "partner-demo", "pair": "CNY/PHP",
        // 50 → 75 bps moves 25, within the 50 bps step: in force at once. 75 → 300 is not.
        "small_bps": "75", "large_bps": "300",
        "sample_cny": "100.00", "sample_fen": "10000",
        "code": code(None),
        "day": DAY, "statement": "partner-partner-demo-PHP.csv",
        "acquirer": "sandbox", "acquirer_file": acquirer_path,
        "parked_event": replayed,
    });
    let settings_path = work.path().join("settings.json");
    std::fs::write(&settings_path, serde_json::to_vec_pretty(&settings).unwrap()).unwrap();

    let run = tokio::process::Command::new("node")
        .arg(project().join("browser.mjs"))
        .arg(&settings_path)
        .current_dir(project())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_MAX, run).await.expect("the browser run ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results: Value = std::fs::read(shots.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    assert!(out.status.success(), "browser run failed:\n{stdout}\n{stderr}\nresults: {results:#}");
    eprintln!("console screenshots: {}", shots.display());

    // Every page opened, as itself, with its policy: no inline script, nothing kept.
    for (page, title) in [
        ("rates", "Rates"),
        ("spreads", "Spreads"),
        ("positions", "Positions and revenue"),
        ("settlement", "Settlement"),
        ("operations", "Operations"),
        ("proposals", "Proposals"),
        ("risk", "Risk"),
        ("audit", "Audit"),
    ] {
        let p = &results["pages"][page];
        assert_eq!((p["status"].as_u64(), p["h1"].as_str()), (Some(200), Some(title)), "{p}");
        let csp = text(&p["csp"]);
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(p["cacheControl"], "no-store", "{p}");
        assert_eq!(p["overflowX"], false, "{page} is wider than 1280 px");
        assert_eq!(results["phone"][page]["overflowX"], false, "{page} is wider than a phone");
        assert!(Path::new(text(&p["screenshot"])).exists());
    }
    assert_eq!(results["consoleErrors"], json!([]), "the pages ran without errors (CSP included)");
    assert_eq!(results["root"], "/console/rates");
    assert_eq!(results["firstTab"], "Skip to the page");
    assert_eq!(results["afterSkip"], "main");

    // A partner's certificate got no page.
    assert_eq!(results["partnerRefused"]["status"], 403, "{}", results["partnerRefused"]);

    // The spread edit: the preview's price is the price a new quote gets, and it moved.
    let spread = &results["spread"];
    assert_eq!(spread["previewTitle"], "Confirm the spread change");
    let (price_before, price_after) = (text(&spread["priceBefore"]), text(&spread["priceAfter"]));
    assert_eq!(
        price_before,
        text(&before["rate"]["price"]),
        "the preview's 'now' is today's price"
    );
    assert_ne!(price_before, price_after, "{spread}");
    assert_eq!(spread["quotePrice"], price_after, "the new quote is priced as the preview said");
    let (s, after) = quote(&d.client("partner-demo"), &code(None), Some(10_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{after}");
    // The large change was approved meanwhile: 300 bps now.
    let spreads = d.daemon().treasury.spreads();
    let o = spreads["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["partner"] == "partner-demo" && o["pair"] == "CNY/PHP")
        .cloned()
        .unwrap();
    assert_eq!(o["bps"], "300", "{spreads}");
    assert_eq!(after["markup_bps"].as_str().map(|m| m.starts_with("300")), Some(true), "{after}");

    // Dual control: the proposer saw it could not approve; admin-2 approved it.
    let prop = &results["proposal"];
    assert!(text(&prop["notice"]).contains("Proposed"), "{prop}");
    assert_eq!(prop["approveDisabled"], true, "{prop}");
    assert!(text(&prop["ownText"]).contains("You proposed this"), "{prop}");
    assert!(text(&prop["navCount"]).starts_with('1'), "{prop}");
    assert!(text(&prop["approved"]).contains("approved"), "{prop}");
    let (records, chain) = d.daemon().treasury.audit().await.unwrap();
    assert!(chain.ok, "{chain:?}");
    let sets: Vec<_> = records.iter().filter(|r| r.action == "spreads.set").collect();
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!((sets[0].actor.as_str(), &sets[0].after), ("admin", &json!("75")));
    assert_eq!(sets[1].actor, "admin-2");
    assert_eq!(
        sets[1].after["approval"],
        json!({"proposal_id": prop["id"], "proposed_by": "admin", "approved_by": "admin-2"})
    );

    // The day ran, as admin, and the downloaded statement lists both payments.
    let settlement = &results["settlement"];
    assert_eq!(settlement["downloadName"], "partner-partner-demo-PHP.csv", "{settlement}");
    let statement = std::fs::read_to_string(text(&settlement["downloaded"])).unwrap();
    for id in &paid {
        assert_eq!(statement.lines().filter(|l| l.contains(id.as_str())).count(), 1, "{statement}");
    }
    assert!(records.iter().any(|r| r.action == "settlement.run"
        && r.target == format!("settlement:{DAY}")
        && r.actor == "admin"));

    // The acquirer's file reconciled: both instructions matched, and the report is kept.
    let recon = &results["reconcile"];
    let verdicts: Vec<&str> =
        recon["verdicts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().trim()).collect();
    assert_eq!(verdicts, ["MATCHED", "MATCHED"], "{recon}");
    assert!(text(&recon["notice"]).contains("every instruction matches"), "{recon}");
    assert!(records.iter().any(|r| r.action == "settlement.reconcile" && r.after["clean"] == true));

    // The replayed event left the parked list, and was delivered; the other stays parked.
    let replay = &results["replay"];
    assert_eq!(
        (replay["listedBefore"].as_u64(), replay["listedAfter"].as_u64()),
        (Some(1), Some(0))
    );
    let still: Vec<String> = d
        .daemon()
        .store()
        .parked()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, p)| p.event.event_id)
        .collect();
    assert_eq!(still.len(), 1, "{still:?}");
    assert!(!still.contains(&replayed));
    d.hooks
        .as_ref()
        .unwrap()
        .wait_until(WAIT, |got| got.iter().any(|r| r.event_id == replayed && r.acked))
        .await;

    // Changes without the console's token, or from elsewhere, were refused; none was made.
    let csrf = &results["csrf"];
    assert_eq!(
        (&csrf["noToken"], &csrf["evilOrigin"], &csrf["noOrigin"]),
        (&json!(403), &json!(403), &json!(403)),
        "{csrf}"
    );
    for t in csrf["titles"].as_array().unwrap() {
        assert!(text(t).contains("Change refused"), "refused by the console's guard: {csrf}");
    }
    // With the token, from the console's origin, the same kind of request is taken.
    assert_ne!(csrf["accepted"], json!(403), "{csrf}");
    assert!(!text(&csrf["acceptedTitle"]).contains("Change refused"), "{csrf}");
    // Not set, and not proposed either (a rate of 1 would have been a proposal).
    assert!(!records.iter().any(|r| r.action.starts_with("rates.")), "no rate was set");
    assert!(
        !records
            .iter()
            .any(|r| r.action == "proposal.create" && r.after.to_string().contains("\"rates\"")),
        "no rate was proposed"
    );

    assert!(text(&results["audit"]["chain"]).starts_with("Verified"), "{}", results["audit"]);
    assert!(results["positionsChart"].as_u64() >= Some(1), "a revenue chart: {results}");
    d.finish().await;
}
