//! Webhook delivery: the outbox worker.
//!
//! Events are written to the outbox in the same transaction as the change they report. This
//! worker POSTs each to its partner's URL ([`WebhookSender`]: mTLS, signed), in the order they
//! were written for any one payment (an event waits while an earlier one of the same payment is
//! undelivered or parked), several payments at a time.
//!
//! Each partner has its own lane, so one partner's endpoint that stalls (every attempt waiting out
//! the timeout) delays no other partner: a lane holds at most `partner_concurrency` deliveries,
//! partners take turns for free slots (the one whose oldest ready event is oldest first), the
//! total stays within `concurrency`, and a partner with nothing under way may always start one
//! even when the others fill `concurrency` (so at most `concurrency` + one per partner run at
//! once). A 2xx moves the event to the delivered log;
//! anything else is retried with exponential backoff and jitter, under the same `event_id`, until
//! the event is older than the maximum age: then it is parked, for an operator to list and replay
//! (admin API). The outbox is the state, so a restart resumes delivery; attempts counted in memory
//! start again from the first backoff step.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use qrbridge_adapters::webhook::WebhookSender;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::WebhookBody;
use crate::model::{DeliveredEvent, OutboxEvent, ParkedEvent, RECORD_VERSION};
use crate::payments::engine::Engine;
use crate::store::{EventSeq, Store, StoreError};

/// How deliveries are retried.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// After this long undelivered (from the event's creation) an event is parked.
    pub max_age: chrono::Duration,
    /// Deliveries under way at once, across partners (see the module doc for the exception).
    pub concurrency: usize,
    /// Deliveries under way at once to any one partner.
    pub partner_concurrency: usize,
}

impl DeliveryPolicy {
    /// The wait after failed attempt number `attempts` (1-based): exponential, capped, with
    /// "equal jitter" (half fixed, half random) so retries of many events spread out.
    pub fn backoff(&self, attempts: u32, rng: &mut fastrand::Rng) -> Duration {
        let exp = self.backoff_initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let cap = exp.min(self.backoff_max);
        let half = cap / 2;
        let jitter_ms = rng.u64(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        half + Duration::from_millis(jitter_ms)
    }
}

/// The body of an event as partners receive it. The same bytes on every attempt.
pub fn body(e: &OutboxEvent) -> Bytes {
    Bytes::from(serde_json::to_vec(&WebhookBody::new(e)).expect("JSON of plain data"))
}

/// An event's attempts so far. Backoff is timed on tokio's monotonic clock; the maximum age on
/// the engine's clock (it is about the event's `created_at`).
#[derive(Debug, Default)]
struct Attempts {
    count: u32,
    next_at: Option<tokio::time::Instant>,
    last_error: String,
}

/// Runs until `shutdown` turns true. `senders` has one entry per partner with a webhook URL;
/// events of other partners are logged as delivered with nothing sent.
pub async fn run<S: Store>(
    engine: Arc<Engine<S>>,
    senders: HashMap<String, WebhookSender>,
    policy: DeliveryPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::new();
    let mut attempts: HashMap<EventSeq, Attempts> = HashMap::new();
    let mut running: JoinSet<(EventSeq, OutboxEvent, Result<(), String>)> = JoinSet::new();
    let mut busy: HashSet<EventSeq> = HashSet::new();
    // Deliveries under way per partner, and what each task holds, so that even a task that
    // panicked gives its event and its lane's slot back.
    let mut lanes: HashMap<String, usize> = HashMap::new();
    let mut tasks: HashMap<tokio::task::Id, (EventSeq, String)> = HashMap::new();
    loop {
        let woken = engine.events_written.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = match plan(&engine, &senders, &policy, &mut attempts, &busy) {
            Ok(plan) => {
                let picked = pick(plan.start, &lanes, running.len(), &policy);
                // Nothing leaves that a crash could take back: an event read from the outbox may
                // belong to a change whose flush has not finished (or failed); it goes out only
                // once a flush covers it.
                let durable = if picked.is_empty() { Ok(()) } else { engine.store().flush().await };
                match durable {
                    Ok(()) => {
                        for (seq, event) in picked {
                            let sender = senders.get(&event.partner).cloned();
                            let now = engine.now().timestamp();
                            busy.insert(seq);
                            *lanes.entry(event.partner.clone()).or_default() += 1;
                            let partner = event.partner.clone();
                            let task = running.spawn(async move {
                                let result = match sender {
                                    Some(s) => s
                                        .deliver(&event.event_id, body(&event), now)
                                        .await
                                        .map_err(|e| e.to_string()),
                                    None => Err("no webhook sender".into()),
                                };
                                (seq, event, result)
                            });
                            tasks.insert(task.id(), (seq, partner));
                        }
                        plan.next
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store flush failed; webhooks wait for it");
                        Some(Duration::from_secs(1))
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable");
                Some(Duration::from_secs(1))
            }
        };
        let sleep = tokio::time::sleep(next.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                if let Some((seq, partner)) = tasks.remove(&id) {
                    busy.remove(&seq);
                    if let Some(n) = lanes.get_mut(&partner) {
                        *n = n.saturating_sub(1);
                    }
                }
                let Ok((_, (seq, event, result))) = done else {
                    tracing::error!("a webhook delivery task failed; its event will be retried");
                    continue;
                };
                let a = attempts.entry(seq).or_default();
                a.count += 1;
                match result {
                    Ok(()) => {
                        let d = DeliveredEvent {
                            v: RECORD_VERSION,
                            event: event.clone(),
                            delivered_at: engine.now(),
                            attempts: a.count,
                            skipped: false,
                        };
                        attempts.remove(&seq);
                        // No flush of its own: a delivered mark lost in a crash means one more
                        // delivery under the same event id, which partners deduplicate.
                        if let Err(e) = engine.store().delivered(seq, &d) {
                            tracing::error!(event = %event.event_id, error = %e, "could not record a delivery");
                        }
                        engine.events_settled.send_modify(|n| *n += 1);
                        tracing::info!(event = %event.event_id, kind = %event.kind, payment = %event.payment_id, "webhook delivered");
                    }
                    Err(e) => {
                        let wait = policy.backoff(a.count, &mut rng);
                        tracing::warn!(event = %event.event_id, attempts = a.count, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook not acknowledged");
                        a.next_at = Some(tokio::time::Instant::now() + wait);
                        a.last_error = e;
                    }
                }
            }
            _ = sleep => {}
            _ = &mut woken => {}
            _ = qrbridge_adapters::https::stopped(&mut shutdown) => {
                // Deliveries under way finish (each is bounded by its timeout); unacknowledged
                // ones stay in the outbox for the next start.
                while running.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Which of the `ready` events (oldest first) to start now, given the deliveries under way per
/// partner (`lanes`) and in all (`running`): partners take turns, the one with the oldest ready
/// event first, each up to `partner_concurrency`; the total stays within `concurrency`, except
/// that a partner with nothing under way may always start one.
fn pick(
    ready: Vec<(EventSeq, OutboxEvent)>,
    lanes: &HashMap<String, usize>,
    running: usize,
    policy: &DeliveryPolicy,
) -> Vec<(EventSeq, OutboxEvent)> {
    let mut queues: Vec<(usize, VecDeque<(EventSeq, OutboxEvent)>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (seq, event) in ready {
        let i = *index.entry(event.partner.clone()).or_insert_with(|| {
            queues.push((lanes.get(&event.partner).copied().unwrap_or(0), VecDeque::new()));
            queues.len() - 1
        });
        queues[i].1.push_back((seq, event));
    }
    let mut total = running;
    let mut start = Vec::new();
    loop {
        let mut any = false;
        for (lane, queue) in &mut queues {
            let room =
                *lane < policy.partner_concurrency && (total < policy.concurrency || *lane == 0);
            if !room {
                continue;
            }
            if let Some(next) = queue.pop_front() {
                start.push(next);
                *lane += 1;
                total += 1;
                any = true;
            }
        }
        if !any {
            return start;
        }
    }
}

struct Plan {
    start: Vec<(EventSeq, OutboxEvent)>,
    next: Option<Duration>,
}

/// Which events to send now, which to park or skip, and when to look again.
fn plan<S: Store>(
    engine: &Engine<S>,
    senders: &HashMap<String, WebhookSender>,
    policy: &DeliveryPolicy,
    attempts: &mut HashMap<EventSeq, Attempts>,
    busy: &HashSet<EventSeq>,
) -> Result<Plan, StoreError> {
    let store = engine.store();
    let now = engine.now();
    // A payment with a parked event gets nothing more until an operator replays it.
    let mut blocked: HashSet<String> =
        store.parked()?.into_iter().map(|(_, p)| p.event.payment_id).collect();
    let mut start = Vec::new();
    let mut next: Option<Duration> = None;
    let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
    let mut parked_any = false;
    for (seq, event) in store.outbox()? {
        let first_of_payment = blocked.insert(event.payment_id.clone());
        if busy.contains(&seq) {
            continue;
        }
        let too_old = now - event.replayed_at.unwrap_or(event.created_at) > policy.max_age;
        if !first_of_payment {
            if too_old {
                let a = attempts.remove(&seq).unwrap_or_default();
                park(&**store, seq, event, a.count, "waiting behind an undelivered event", now)?;
                engine.events_settled.send_modify(|n| *n += 1);
                parked_any = true;
            }
            continue;
        }
        if !senders.contains_key(&event.partner) {
            let d = DeliveredEvent {
                v: RECORD_VERSION,
                event,
                delivered_at: now,
                attempts: 0,
                skipped: true,
            };
            store.delivered(seq, &d)?;
            engine.events_settled.send_modify(|n| *n += 1);
            continue;
        }
        let a = attempts.entry(seq).or_default();
        let mono = tokio::time::Instant::now();
        if let Some(at) = a.next_at.filter(|at| *at > mono) {
            soonest(at - mono);
            continue;
        }
        if too_old {
            let a = attempts.remove(&seq).unwrap_or_default();
            let reason = if a.last_error.is_empty() { "too old".into() } else { a.last_error };
            park(&**store, seq, event, a.count, &reason, now)?;
            engine.events_settled.send_modify(|n| *n += 1);
            parked_any = true;
            continue;
        }
        start.push((seq, event));
    }
    if parked_any {
        // Park records are not urgent enough for their own flush; the next commit carries them.
        tracing::warn!("webhook events parked; list them with the admin API");
    }
    Ok(Plan { start, next })
}

fn park<S: Store>(
    store: &S,
    seq: EventSeq,
    event: OutboxEvent,
    attempts: u32,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tracing::warn!(event = %event.event_id, payment = %event.payment_id, attempts, reason, "webhook event parked");
    let p = ParkedEvent {
        v: RECORD_VERSION,
        parked_at: now,
        event,
        attempts,
        last_error: reason.to_owned(),
    };
    store.park(seq, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(concurrency: usize, partner_concurrency: usize) -> DeliveryPolicy {
        DeliveryPolicy {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            max_age: chrono::Duration::hours(1),
            concurrency,
            partner_concurrency,
        }
    }

    /// Ready events, oldest first, for `partners` in that order (one event per payment).
    fn ready(partners: &[&str]) -> Vec<(EventSeq, OutboxEvent)> {
        partners
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let event = OutboxEvent {
                    v: RECORD_VERSION,
                    event_id: format!("evt_{i}"),
                    partner: (*p).to_owned(),
                    kind: "payment.succeeded".into(),
                    payment_id: format!("pay_{i}"),
                    created_at: DateTime::<Utc>::UNIX_EPOCH,
                    data: serde_json::Value::Null,
                    replayed_at: None,
                };
                (i as EventSeq, event)
            })
            .collect()
    }

    fn seqs(started: &[(EventSeq, OutboxEvent)]) -> Vec<EventSeq> {
        started.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn a_partner_with_a_backlog_takes_turns_and_holds_at_most_its_lane() {
        // A wrote six events before B's two: B's still go out in the first round.
        let events = ready(&["a", "a", "a", "a", "a", "a", "b", "b"]);
        let started = pick(events, &HashMap::new(), 0, &policy(4, 2));
        assert_eq!(seqs(&started), vec![0, 6, 1, 7]);
    }

    #[test]
    fn a_stalled_partner_at_its_cap_gets_nothing_more_and_others_still_start() {
        let lanes = HashMap::from([("a".to_owned(), 2)]);
        let started = pick(ready(&["a", "a", "b", "a", "b", "b"]), &lanes, 2, &policy(8, 2));
        assert_eq!(seqs(&started), vec![2, 4]);
    }

    #[test]
    fn a_partner_with_nothing_under_way_always_gets_one() {
        // Stalled partners fill every slot of `concurrency`; B and C still get one each, no more.
        let lanes = HashMap::from([("a".to_owned(), 2), ("z".to_owned(), 2)]);
        let started = pick(ready(&["b", "b", "c", "a"]), &lanes, 4, &policy(4, 2));
        assert_eq!(seqs(&started), vec![0, 2]);
    }

    #[test]
    fn the_total_stays_within_concurrency_otherwise() {
        let started =
            pick(ready(&["a", "b", "c", "a", "b", "c"]), &HashMap::new(), 0, &policy(4, 4));
        assert_eq!(seqs(&started), vec![0, 1, 2, 3]);
    }
}
