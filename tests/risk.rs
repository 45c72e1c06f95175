//! Risk controls end to end (issue 15), on the real daemon with real mTLS, on both stores: each
//! kind of rule refuses at its boundary with `422 RISK_DECLINED` and its reason, stores nothing
//! but the decision's record, and lets the payment one minor unit inside through; blocklist files
//! and rules change on reload; exposure holds under 100 concurrent payments (exactly as many
//! succeed as the cap allows); the counters are rebuilt from the store across a restart.

mod support;

use http::StatusCode;
use qrbridge::store::Store;
use qrbridge_config::Config;
use serde_json::Value;
use support::daemon::{assert_error, Setup, TestClient, TestDaemon};
use support::flows::{code, pay, quote};

const PARTNER: &str = "partner-demo";

/// Changes the configuration a reload reads and reloads it.
async fn reload(d: &TestDaemon, change: impl FnOnce(&mut Config)) {
    let in_force = d.daemon().reloader().config_in_force().await;
    {
        let mut c = d.config.lock().unwrap();
        *c = in_force;
        change(&mut c);
    }
    d.daemon().reload("test").await.expect("the reload takes");
}

/// Quotes `fen` on the static test code in PHP; the quote.
async fn quoted(c: &TestClient, fen: i64) -> Value {
    let (s, q) = quote(c, &code(None), Some(fen), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    q
}

/// Quotes and pays `fen` as `payer`; the answer.
async fn pays(c: &TestClient, fen: i64, request_id: &str, payer: &str) -> (StatusCode, Value) {
    let q = quoted(c, fen).await;
    pay(c, request_id, q["quote_id"].as_str().unwrap(), payer).await
}

/// Asserts a risk refusal with `reason`, and that nothing of the payment was stored.
async fn refused(d: &TestDaemon, got: &(StatusCode, Value), request_id: &str, reason: &str) {
    assert_error(got, 422, "RISK_DECLINED");
    assert_eq!(got.1["error"]["reason"], reason, "{}", got.1);
    assert_eq!(got.1["error"]["retryable"], false, "{}", got.1);
    let stored = d.daemon().store().payment_by_request(PARTNER, request_id).await.unwrap();
    assert!(stored.is_none(), "{request_id}: a refused payment was stored");
}

fn created(got: &(StatusCode, Value)) {
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    assert_eq!(got.1["status"], "SUCCEEDED", "{}", got.1);
}

/// The wallet amount of a quote, in minor units (the API's amounts are minor units).
fn wallet_minor(q: &Value) -> i64 {
    q["wallet_amount"]["value"].as_str().unwrap().parse().unwrap()
}

crate::on_both_stores! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_rule_refuses_at_its_boundary_and_stores_only_the_decision() {
        let d = TestDaemon::start_with(Setup {
            tweak: Box::new(|c| {
                let r = c.risk.rules.partners.entry(PARTNER.into()).or_default();
                r.payment_cny_minor_min = Some(100);
                r.payment_cny_minor_max = Some(2_000);
                r.payer.hour_count_max = Some(2);
            }),
            ..Setup::default()
        })
        .await;
        let c = d.client(PARTNER);
        let started = d.daemon().engine().now();

        // Amount bounds: one under the minimum refused, the minimum and the maximum pass, one
        // over the maximum refused.
        let got = pays(&c, 99, "min-1", "payer-a").await;
        refused(&d, &got, "min-1", "AMOUNT_LIMIT").await;
        created(&pays(&c, 100, "min", "payer-a").await);
        created(&pays(&c, 2_000, "max", "payer-b").await);
        let got = pays(&c, 2_001, "max-plus-1", "payer-c").await;
        refused(&d, &got, "max-plus-1", "AMOUNT_LIMIT").await;

        // Velocity: payer-a's second payment in the hour passes (at the limit), the third is
        // refused; another payer is not held by payer-a's count.
        created(&pays(&c, 500, "a-2", "payer-a").await);
        let got = pays(&c, 500, "a-3", "payer-a").await;
        refused(&d, &got, "a-3", "VELOCITY_LIMIT").await;
        created(&pays(&c, 500, "c-1", "payer-c").await);

        // A blocklist file read on reload refuses the merchant category; taken out, it passes.
        let list = d.dir.path().join("blocked-mccs.txt");
        std::fs::write(&list, "# gambling\n7995\n5812  # the noodle house's\n").unwrap();
        reload(&d, |c| c.risk.blocklists.mccs = Some(list.clone())).await;
        let got = pays(&c, 500, "blocked", "payer-d").await;
        refused(&d, &got, "blocked", "MCC_BLOCKED").await;
        std::fs::write(&list, "7995\n").unwrap();
        reload(&d, |_| {}).await;
        created(&pays(&c, 500, "unblocked", "payer-d").await);

        // A bad list is refused whole by the reload, the one in force stays.
        std::fs::write(&list, "7995\nnot-an-mcc\n").unwrap();
        let in_force = d.daemon().reloader().config_in_force().await;
        *d.config.lock().unwrap() = in_force;
        let why = d.daemon().reload("test").await.expect_err("a bad list is refused");
        assert!(why.0.iter().any(|r| r.contains("not-an-mcc")), "{why:?}");
        std::fs::write(&list, "7995\n").unwrap();
        created(&pays(&c, 500, "still", "payer-e").await);

        // The merchant category's rolling day: 4,100 fen paid so far; a limit of 5,100 refuses
        // 1,001 more, takes 1,000 (at the limit), then refuses one more fen.
        reload(&d, |c| {
            c.risk.rules.mccs.entry("5812".into()).or_default().day_cny_minor_max = Some(5_100);
        })
        .await;
        let got = pays(&c, 1_001, "mcc-over", "payer-f").await;
        refused(&d, &got, "mcc-over", "MCC_LIMIT").await;
        created(&pays(&c, 1_000, "mcc-at", "payer-f").await);
        let got = pays(&c, 100, "mcc-after", "payer-g").await;
        refused(&d, &got, "mcc-after", "MCC_LIMIT").await;

        // Each refusal's record is kept, with its reason and rule; flags none here.
        let now = d.daemon().engine().now();
        let decisions = d
            .daemon()
            .store()
            .risk_decisions(started, now + chrono::Duration::seconds(1), 100)
            .await
            .unwrap();
        let got: Vec<(String, String, String)> = decisions
            .iter()
            .map(|r| (r.request_id.clone(), r.reasons.join(","), r.rules.join(",")))
            .collect();
        let want = [
            ("min-1", "AMOUNT_LIMIT", "payment_cny_minor_min"),
            ("max-plus-1", "AMOUNT_LIMIT", "payment_cny_minor_max"),
            ("a-3", "VELOCITY_LIMIT", "payer.hour_count_max"),
            ("blocked", "MCC_BLOCKED", "blocklist.mccs"),
            ("mcc-over", "MCC_LIMIT", "mcc.day_cny_minor_max"),
            ("mcc-after", "MCC_LIMIT", "mcc.day_cny_minor_max"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(got, want);
        assert!(decisions.iter().all(|r| r.outcome == "REFUSED" && r.partner == PARTNER));
        d.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exposure_lets_exactly_what_the_cap_allows_through_100_concurrent_payments() {
        // The sandbox answers every one of them, however busy the machine.
        let d = TestDaemon::start_with(Setup {
            tweak: Box::new(|c| {
                c.acquirers[0].timeout_ms = 30_000;
                // What the partner owes is read at start, and not again during the test: the
                // book's own count is what is checked.
                c.risk.refresh_ms = 600_000;
            }),
            ..Setup::default()
        })
        .await;
        let c = d.client(PARTNER);
        // The cap: 40 payments of this size, prefunded; no credit line.
        let w = wallet_minor(&quoted(&c, 1_000).await);
        reload(&d, |c| {
            let r = c.risk.rules.partners.entry(PARTNER.into()).or_default();
            let php = "PHP".parse().unwrap();
            let cur = r.currencies.entry(php).or_default();
            cur.prefund_minor = Some(40 * w);
            cur.credit_line_minor = Some(0);
        })
        .await;
        let mut quotes = Vec::new();
        for _ in 0..100 {
            let q = quoted(&c, 1_000).await;
            assert_eq!(wallet_minor(&q), w, "the rate moved: {q}");
            quotes.push(q["quote_id"].as_str().unwrap().to_owned());
        }
        let tasks: Vec<_> = quotes
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let c = c.clone();
                tokio::spawn(async move {
                    pay(&c, &format!("x-{i}"), &q, &format!("payer-{i}")).await
                })
            })
            .collect();
        let (mut ok, mut declined) = (0, 0);
        for t in tasks {
            let got = t.await.unwrap();
            match got.0 {
                StatusCode::CREATED => {
                    created(&got);
                    ok += 1;
                }
                _ => {
                    assert_error(&got, 422, "RISK_DECLINED");
                    assert_eq!(got.1["error"]["reason"], "EXPOSURE_LIMIT", "{}", got.1);
                    declined += 1;
                }
            }
        }
        assert_eq!((ok, declined), (40, 60));

        // The next one says by how much it would pass the cap: one payment's worth.
        let got = pays(&c, 1_000, "one-more", "payer-x").await;
        refused(&d, &got, "one-more", "EXPOSURE_LIMIT").await;
        let now = d.daemon().engine().now();
        let last = d
            .daemon()
            .store()
            .risk_decisions(now - chrono::Duration::minutes(5), now + chrono::Duration::seconds(1), 1_000)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.request_id == "one-more")
            .expect("its decision is kept");
        assert_eq!(last.over_by.map(|a| a.minor()), Some(w), "{last:?}");

        d.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_counters_are_rebuilt_from_the_store_across_a_restart() {
        use support::crash;
        let dir = crash::Dir::new("risk-restart");
        let database = match support::both::kind() {
            support::both::StoreKind::Postgres => support::pg::database().await,
            support::both::StoreKind::Sled => None,
        };
        let mut config = qrbridge::daemon::embedded_config(dir.path(), support::loopback()).unwrap();
        config.ops.listen = Some(([127, 0, 0, 1], 0).into());
        config.storage.url = database.as_ref().map(|db| db.url.clone());
        let (file, log) = (dir.path().join("qrbridge.toml"), dir.path().join("qrbridge.log"));
        let pki = dir.path().join("pki");
        crash::write_config(&file, &config);

        // The wallet amount of one payment, to set the cap by.
        let d = crash::start(&file, &log, "info").await;
        let c = crash::client(&pki, PARTNER, d.partner_addr);
        let w = wallet_minor(&quoted(&c, 1_000).await);
        crash::stop(d).await;

        // Two payments a payer a day; room for three payments.
        {
            let r = config.risk.rules.partners.entry(PARTNER.into()).or_default();
            r.payer.day_count_max = Some(2);
            let cur = r.currencies.entry("PHP".parse().unwrap()).or_default();
            cur.prefund_minor = Some(3 * w);
            cur.credit_line_minor = Some(0);
        }
        crash::write_config(&file, &config);
        let d = crash::start(&file, &log, "info").await;
        let c = crash::client(&pki, PARTNER, d.partner_addr);
        created(&pays(&c, 1_000, "r-1", "payer-r").await);
        created(&pays(&c, 1_000, "r-2", "payer-r").await);
        crash::stop(d).await;

        // Counted from the store, not remembered: payer-r has had its two today, and the
        // partner owes two payments of the three it may.
        let d = crash::start(&file, &log, "info").await;
        let c = crash::client(&pki, PARTNER, d.partner_addr);
        let got = pays(&c, 1_000, "r-3", "payer-r").await;
        assert_error(&got, 422, "RISK_DECLINED");
        assert_eq!(got.1["error"]["reason"], "VELOCITY_LIMIT", "{}", got.1);
        created(&pays(&c, 1_000, "t-1", "payer-t").await);
        let got = pays(&c, 1_000, "u-1", "payer-u").await;
        assert_error(&got, 422, "RISK_DECLINED");
        assert_eq!(got.1["error"]["reason"], "EXPOSURE_LIMIT", "{}", got.1);
        crash::stop(d).await;
        drop(database);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_of_one_request_get_its_payment_never_a_refusal() {
        let d = TestDaemon::start_with(Setup {
            tweak: Box::new(|c| {
                let r = c.risk.rules.partners.entry(PARTNER.into()).or_default();
                r.payer.hour_count_max = Some(1);
            }),
            ..Setup::default()
        })
        .await;
        let c = d.client(PARTNER);
        let q = quoted(&c, 1_000).await;
        let quote_id = q["quote_id"].as_str().unwrap().to_owned();
        // Eight copies of one request at once: the first holds the payer's only allowance while
        // it is written; the others wait for it and get its payment.
        let copies: Vec<_> = (0..8)
            .map(|_| {
                let (c, quote_id) = (c.clone(), quote_id.clone());
                tokio::spawn(async move { pay(&c, "dup-1", &quote_id, "payer-dup").await })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        let mut created_n = 0;
        for t in copies {
            let (s, p) = t.await.unwrap();
            assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s}: {p}");
            created_n += usize::from(s == StatusCode::CREATED);
            ids.insert(p["payment_id"].as_str().unwrap().to_owned());
        }
        assert_eq!((created_n, ids.len()), (1, 1), "{ids:?}");
        // Another request by the same payer is over the limit.
        let got = pays(&c, 1_000, "dup-2", "payer-dup").await;
        refused(&d, &got, "dup-2", "VELOCITY_LIMIT").await;
        d.finish().await;
    }
}
