//! One partner's stalled webhook endpoint delays no other partner (issue 12, item 13): the real
//! daemon over mTLS on loopback sends partner A's webhooks to an endpoint that holds every request
//! unanswered (past the end of the test: the sender's timeout is two minutes) and partner B's to
//! one that answers at once. With more of A's events waiting than `webhooks.concurrency`, B's
//! event is delivered while A's requests are still held, and A never has more than its lane's
//! share under way. Waits are on the endpoint's signals, never on sleeps.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::daemon::{Setup, TestDaemon};
use support::flows::quote_and_pay;
use support::webhook::{Mode, Stalls};

/// Safety net for waits on signals; far below A's two-minute delivery timeout.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_stalled_partner_endpoint_does_not_delay_the_others() {
    let d = TestDaemon::start_with(Setup {
        webhooks: Some(Mode::Ack),
        tweak: Box::new(|c| {
            // Partner A (`partner-demo`) gets the endpoint's stalling path.
            support::webhook::stall_first_partner(c);
        }),
        ..Setup::default()
    })
    .await;
    let hooks = d.hooks.as_ref().unwrap();
    let (a, b) = (d.client("partner-demo"), d.client("partner-other"));

    // A: six payments, six events, more than every delivery slot there is.
    for i in 0..6 {
        let (s, p) = quote_and_pay(&a, 1_000 + i, &format!("a-{i}")).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
    }
    hooks.wait_stalls(WAIT, |s| s.held >= 2).await;

    // B: one payment, delivered while A's endpoint still holds A's requests.
    let (s, p) = quote_and_pay(&b, 1_000, "b-0").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let paid = p["payment_id"].as_str().unwrap().to_owned();
    hooks.wait_until(WAIT, |got| got.iter().any(|r| r.acked && r.payment_id == paid)).await;
    assert_eq!(
        hooks.stalls(),
        Stalls { held: 2, held_max: 2, total: 2 },
        "A's two deliveries are still held, and A never got more than its lane"
    );
    let got = hooks.received();
    assert!(got.iter().all(|r| r.signature_ok), "{got:?}");

    // Let A's endpoint answer (503) so the daemon's shutdown does not wait on held deliveries.
    hooks.release_stalled();
    hooks.wait_stalls(WAIT, |s| s.held == 0).await;
    d.finish().await;
}
