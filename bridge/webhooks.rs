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
//!
//! The worker keeps a queue in memory so that a wake costs what changed, not the
//! outbox: it reads the whole outbox and the parked list once at start, then only the events
//! written after the last one it read ([`Store::outbox_after`]: the sequence is the commit order,
//! so a cursor misses nothing). A replay puts an event back below that cursor and changes
//! [`Store::outbox_epoch`]; on a new epoch the worker reads everything again, keeping the
//! deliveries under way and the attempts it counted. Per payment only the first undelivered event
//! may go (none while the payment has a parked event); such an event is ready (kept per partner,
//! so picking costs the partners and what starts, not what waits), backing off (ordered by when it
//! is due), or being delivered. Every event neither backing off nor under way is also ordered by
//! when its maximum age starts (its creation, or its replay), so what is too old is found at the
//! front of that order, not by a scan.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use qrbridge_adapters::webhook::WebhookSender;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::WebhookBody;
use crate::model::{DeliveredEvent, OutboxEvent, ParkedEvent, RECORD_VERSION};
use crate::payments::engine::Engine;
use crate::store::{EventSeq, Store, StoreError};

/// Events read from the outbox per store call.
const BATCH: usize = 1024;

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
    /// Look at the outbox at least this often: set when other nodes write events, which wake
    /// no one here.
    pub poll: Option<Duration>,
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
    next_at: Option<Instant>,
    last_error: String,
}

/// Where a known event sits in the [`Queue`]'s indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// In no index: only between taking it out of one and putting it in another.
    Loose,
    /// Not its payment's first undelivered event, or its payment has a parked event: it waits,
    /// and ages.
    Behind,
    /// Its payment's next, to send now: in its partner's ready set, and ages.
    Ready,
    /// Its payment's next, backing off until then.
    Waiting(Instant),
    /// Its payment's next, of a partner with no sender: recorded as delivered, nothing sent.
    Skip,
    /// Being delivered.
    Busy,
}

#[derive(Debug)]
struct Known {
    event: OutboxEvent,
    slot: Slot,
}

impl Known {
    /// Where the event's maximum age counts from.
    fn age_start(&self) -> DateTime<Utc> {
        self.event.replayed_at.unwrap_or(self.event.created_at)
    }
}

/// The undelivered events the worker knows of, and what each waits for.
#[derive(Debug, Default)]
struct Queue {
    /// Partners with a webhook sender.
    has_sender: HashSet<String>,
    /// The last sequence read from the outbox.
    cursor: Option<u64>,
    /// The outbox epoch the state was read under; `None` until the first read.
    epoch: Option<u64>,
    events: HashMap<EventSeq, Known>,
    /// Each payment's undelivered events, in order: the first is the one that may go.
    by_payment: HashMap<String, BTreeSet<EventSeq>>,
    /// Payments with a parked event: nothing of theirs goes until a replay.
    blocked: HashSet<String>,
    /// [`Slot::Ready`] events per partner.
    ready: HashMap<String, BTreeSet<EventSeq>>,
    /// [`Slot::Waiting`] events by when they are due.
    due: BTreeSet<(Instant, EventSeq)>,
    /// [`Slot::Behind`] and [`Slot::Ready`] events by where their maximum age counts from.
    ageing: BTreeSet<(DateTime<Utc>, EventSeq)>,
    /// [`Slot::Skip`] events.
    skips: BTreeSet<EventSeq>,
    attempts: HashMap<EventSeq, Attempts>,
}

impl Queue {
    fn new(has_sender: HashSet<String>) -> Self {
        Queue { has_sender, ..Queue::default() }
    }

    /// The partners with a sender changed (a reload): every event waiting is placed again at
    /// the next sync (those under way stay so, and attempts so far are kept).
    fn senders_changed(&mut self, has_sender: HashSet<String>) {
        self.has_sender = has_sender;
        self.epoch = None;
    }

    /// Reads what the outbox holds that the queue does not: the events after the cursor, or, when
    /// the epoch changed (a replay), everything again.
    async fn sync<S: Store>(&mut self, store: &S) -> Result<(), StoreError> {
        let epoch = store.outbox_epoch().await?;
        if self.epoch != Some(epoch) {
            return self.rebuild(store, epoch).await;
        }
        loop {
            let page = store.outbox_after(self.cursor, BATCH).await?;
            self.cursor = page.cursor;
            for (seq, event) in page.events {
                if !self.events.contains_key(&seq) {
                    self.insert(seq, event, Slot::Loose);
                    // After the events it follows: its place is final.
                    self.place(seq);
                }
            }
            if !page.more {
                return Ok(());
            }
        }
    }

    /// Reads the whole outbox and the parked list again under `epoch` (read before them, so a
    /// replay during the reads brings another rebuild). Deliveries under way stay under way, and
    /// attempts counted stay with their events. On an error nothing changed.
    async fn rebuild<S: Store>(&mut self, store: &S, epoch: u64) -> Result<(), StoreError> {
        let blocked: HashSet<String> =
            store.parked().await?.into_iter().map(|(_, p)| p.event.payment_id).collect();
        let mut outbox = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.outbox_after(cursor, BATCH).await?;
            cursor = page.cursor;
            outbox.extend(page.events);
            if !page.more {
                break;
            }
        }
        let busy: HashSet<EventSeq> =
            self.events.iter().filter(|(_, k)| k.slot == Slot::Busy).map(|(s, _)| *s).collect();
        let mut attempts = std::mem::take(&mut self.attempts);
        *self = Queue {
            has_sender: std::mem::take(&mut self.has_sender),
            cursor,
            epoch: Some(epoch),
            blocked,
            ..Queue::default()
        };
        for (seq, event) in outbox {
            let slot = if busy.contains(&seq) { Slot::Busy } else { Slot::Loose };
            self.insert(seq, event, slot);
        }
        attempts.retain(|seq, _| self.events.contains_key(seq));
        self.attempts = attempts;
        let seqs: Vec<EventSeq> = self.events.keys().copied().collect();
        for seq in seqs {
            self.place(seq);
        }
        Ok(())
    }

    fn insert(&mut self, seq: EventSeq, event: OutboxEvent, slot: Slot) {
        self.by_payment.entry(event.payment_id.clone()).or_default().insert(seq);
        self.events.insert(seq, Known { event, slot });
    }

    /// Puts a [`Slot::Loose`] event where it belongs (any other stays as it is).
    fn place(&mut self, seq: EventSeq) {
        let Some(k) = self.events.get_mut(&seq) else { return };
        if k.slot != Slot::Loose {
            return;
        }
        let e = &k.event;
        let first = !self.blocked.contains(&e.payment_id)
            && self.by_payment.get(&e.payment_id).and_then(|s| s.first()) == Some(&seq);
        let backoff = self.attempts.get(&seq).and_then(|a| a.next_at);
        k.slot = match backoff {
            _ if !first => Slot::Behind,
            _ if !self.has_sender.contains(&e.partner) => Slot::Skip,
            Some(at) if at > Instant::now() => Slot::Waiting(at),
            _ => Slot::Ready,
        };
        match k.slot {
            Slot::Behind => {
                self.ageing.insert((k.age_start(), seq));
            }
            Slot::Ready => {
                self.ageing.insert((k.age_start(), seq));
                self.ready.entry(e.partner.clone()).or_default().insert(seq);
            }
            Slot::Waiting(at) => {
                self.due.insert((at, seq));
            }
            Slot::Skip => {
                self.skips.insert(seq);
            }
            Slot::Loose | Slot::Busy => {}
        }
    }

    /// Takes an event out of every index ([`Slot::Busy`] stays busy).
    fn unplace(&mut self, seq: EventSeq) {
        let Some(k) = self.events.get_mut(&seq) else { return };
        match k.slot {
            Slot::Behind => {
                self.ageing.remove(&(k.age_start(), seq));
            }
            Slot::Ready => {
                self.ageing.remove(&(k.age_start(), seq));
                if let Some(r) = self.ready.get_mut(&k.event.partner) {
                    r.remove(&seq);
                    if r.is_empty() {
                        self.ready.remove(&k.event.partner);
                    }
                }
            }
            Slot::Waiting(at) => {
                self.due.remove(&(at, seq));
            }
            Slot::Skip => {
                self.skips.remove(&seq);
            }
            Slot::Loose | Slot::Busy => return,
        }
        k.slot = Slot::Loose;
    }

    /// Places again a payment's first undelivered event (after its payment changed).
    fn replace_first(&mut self, payment_id: &str) {
        if let Some(&seq) = self.by_payment.get(payment_id).and_then(|s| s.first()) {
            self.unplace(seq);
            self.place(seq);
        }
    }

    /// Forgets an event that left the outbox (and its attempts); its payment's next takes its
    /// place.
    fn remove(&mut self, seq: EventSeq) {
        self.unplace(seq);
        self.attempts.remove(&seq);
        let Some(k) = self.events.remove(&seq) else { return };
        let payment = &k.event.payment_id;
        if let Some(s) = self.by_payment.get_mut(payment) {
            s.remove(&seq);
            if s.is_empty() {
                self.by_payment.remove(payment);
            }
        }
        self.replace_first(payment);
    }

    /// Marks a ready event as being delivered; returns it.
    fn start(&mut self, seq: EventSeq) -> Option<OutboxEvent> {
        self.unplace(seq);
        let k = self.events.get_mut(&seq)?;
        k.slot = Slot::Busy;
        Some(k.event.clone())
    }

    /// An event no longer being delivered (it is still in the outbox) goes where it belongs.
    fn release(&mut self, seq: EventSeq) {
        if let Some(k) = self.events.get_mut(&seq) {
            if k.slot == Slot::Busy {
                k.slot = Slot::Loose;
            }
        }
        self.place(seq);
    }
}

/// The webhook senders in force, one per partner with a webhook URL; made again on reload
/// ([`Senders::replace`]). A delivery under way finishes with the sender it began with.
#[derive(Clone, Default)]
pub struct Senders(Arc<std::sync::RwLock<Arc<HashMap<String, WebhookSender>>>>);

impl Senders {
    pub fn new(senders: HashMap<String, WebhookSender>) -> Self {
        Senders(Arc::new(std::sync::RwLock::new(Arc::new(senders))))
    }

    /// The senders in force.
    pub fn current(&self) -> Arc<HashMap<String, WebhookSender>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `senders` in force for the deliveries that start from now on.
    pub fn replace(&self, senders: HashMap<String, WebhookSender>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(senders);
    }
}

/// Runs until `shutdown` turns true. `senders` has one entry per partner with a webhook URL;
/// events of other partners are logged as delivered with nothing sent.
pub async fn run<S: Store>(
    engine: Arc<Engine<S>>,
    senders: Senders,
    policy: DeliveryPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::new();
    let mut in_force = senders.current();
    let mut queue = Queue::new(in_force.keys().cloned().collect());
    let mut running: JoinSet<(EventSeq, OutboxEvent, Result<(), String>)> = JoinSet::new();
    // Deliveries under way per partner, and what each task holds, so that even a task that
    // panicked gives its event and its lane's slot back.
    let mut lanes: HashMap<String, usize> = HashMap::new();
    let mut tasks: HashMap<tokio::task::Id, (EventSeq, String)> = HashMap::new();
    loop {
        let woken = engine.events_written.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now_in_force = senders.current();
        if !Arc::ptr_eq(&now_in_force, &in_force) {
            queue.senders_changed(now_in_force.keys().cloned().collect());
            in_force = now_in_force;
        }
        let next = match plan(&engine, &mut queue, &policy, &lanes, running.len()).await {
            Ok(plan) => {
                // Nothing leaves that a crash could take back: an event read from the outbox may
                // belong to a change whose flush has not finished (or failed); it goes out only
                // once a flush covers it.
                let durable =
                    if plan.start.is_empty() { Ok(()) } else { engine.store().flush().await };
                match durable {
                    Ok(()) => {
                        for seq in plan.start {
                            let Some(event) = queue.start(seq) else { continue };
                            let sender = in_force.get(&event.partner).cloned();
                            let now = engine.now().timestamp();
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
        let idle = policy.poll.unwrap_or(Duration::from_secs(3600));
        let sleep = tokio::time::sleep(next.map_or(idle, |n| n.min(idle)));
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let held = tasks.remove(&id);
                if let Some((_, partner)) = &held {
                    if let Some(n) = lanes.get_mut(partner) {
                        *n = n.saturating_sub(1);
                    }
                }
                match done {
                    Ok((_, (seq, event, result))) => {
                        settle(&engine, &mut queue, &policy, &mut rng, seq, event, result).await;
                    }
                    Err(_) => {
                        tracing::error!("a webhook delivery task failed; its event will be retried");
                        if let Some((seq, _)) = held {
                            queue.release(seq);
                        }
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

/// Records the outcome of one delivery attempt.
async fn settle<S: Store>(
    engine: &Engine<S>,
    queue: &mut Queue,
    policy: &DeliveryPolicy,
    rng: &mut fastrand::Rng,
    seq: EventSeq,
    event: OutboxEvent,
    result: Result<(), String>,
) {
    let a = queue.attempts.entry(seq).or_default();
    a.count += 1;
    crate::ops::webhook_delivery(
        &event.partner,
        if result.is_ok() { "delivered" } else { "failed" },
    );
    match result {
        Ok(()) => {
            let d = DeliveredEvent {
                v: RECORD_VERSION,
                event: event.clone(),
                delivered_at: engine.now(),
                attempts: a.count,
                skipped: false,
            };
            // No flush of its own: a delivered mark lost in a crash means one more delivery
            // under the same event id, which partners deduplicate.
            match engine.store().delivered(seq, &d).await {
                Ok(()) => queue.remove(seq),
                Err(e) => {
                    // Still in the outbox: it goes again, counting its attempts anew.
                    tracing::error!(event = %event.event_id, error = %e, "could not record a delivery");
                    queue.attempts.remove(&seq);
                    queue.release(seq);
                }
            }
            engine.events_settled.send_modify(|n| *n += 1);
            tracing::info!(event = %event.event_id, kind = %event.kind, payment = %event.payment_id, "webhook delivered");
        }
        Err(e) => {
            let wait = policy.backoff(a.count, rng);
            tracing::warn!(event = %event.event_id, attempts = a.count, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook not acknowledged");
            a.next_at = Some(Instant::now() + wait);
            a.last_error = e;
            queue.release(seq);
        }
    }
}

/// Which of the `ready` events (per partner, in order) to start now, given the deliveries under
/// way per partner (`lanes`) and in all (`running`): partners take turns, the one whose oldest
/// ready event is oldest first, each up to `partner_concurrency`; the total stays within
/// `concurrency`, except that a partner with nothing under way may always start one. Costs the
/// partners and what starts, not what is ready.
fn pick(
    ready: &HashMap<String, BTreeSet<EventSeq>>,
    lanes: &HashMap<String, usize>,
    running: usize,
    policy: &DeliveryPolicy,
) -> Vec<EventSeq> {
    let mut order: Vec<(EventSeq, &String, &BTreeSet<EventSeq>)> =
        ready.iter().filter_map(|(partner, seqs)| Some((*seqs.first()?, partner, seqs))).collect();
    order.sort_unstable_by_key(|(first, ..)| *first);
    let mut turns: VecDeque<(usize, std::collections::btree_set::Iter<'_, EventSeq>)> = order
        .into_iter()
        .map(|(_, partner, seqs)| (lanes.get(partner).copied().unwrap_or(0), seqs.iter()))
        .collect();
    let mut total = running;
    let mut start = Vec::new();
    // Lanes and the total only grow, so a partner without room now has none later either: it
    // leaves the turns, as does one with nothing more ready.
    while let Some((lane, mut seqs)) = turns.pop_front() {
        let room = lane < policy.partner_concurrency && (total < policy.concurrency || lane == 0);
        if !room {
            continue;
        }
        let Some(&seq) = seqs.next() else { continue };
        start.push(seq);
        total += 1;
        turns.push_back((lane + 1, seqs));
    }
    start
}

struct Plan {
    start: Vec<EventSeq>,
    next: Option<Duration>,
}

/// Brings the queue up to date, parks or skips what must be, and says which events to send now
/// and when to look again. Costs the new events, the events due, those parked or skipped, and
/// those started; not the outbox.
async fn plan<S: Store>(
    engine: &Engine<S>,
    queue: &mut Queue,
    policy: &DeliveryPolicy,
    lanes: &HashMap<String, usize>,
    running: usize,
) -> Result<Plan, StoreError> {
    let store = engine.store();
    queue.sync(&**store).await?;
    // Backoffs that ended.
    let mono = Instant::now();
    while let Some(&(at, seq)) = queue.due.first() {
        if at > mono {
            break;
        }
        queue.unplace(seq);
        queue.place(seq);
    }
    let now = engine.now();
    // Partners with no sender: recorded as delivered, nothing sent.
    while let Some(&seq) = queue.skips.first() {
        let Some(k) = queue.events.get(&seq) else {
            queue.skips.remove(&seq);
            continue;
        };
        // Its header only: the log keeps no more (and the body is not copied for nothing).
        let d = DeliveredEvent {
            v: RECORD_VERSION,
            event: k.event.header(),
            delivered_at: now,
            attempts: 0,
            skipped: true,
        };
        store.delivered(seq, &d).await?;
        queue.remove(seq);
        engine.events_settled.send_modify(|n| *n += 1);
        // Each mark is a synchronous store write: a long run of them gives the runtime's
        // thread back now and then, so payments on it do not wait behind the whole run.
        tokio::task::consume_budget().await;
    }
    // Too old: parked. Older than `max_age` means an age start before this.
    let oldest = now.checked_sub_signed(policy.max_age).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut parked_any = false;
    while let Some(&(start, seq)) = queue.ageing.first() {
        if start >= oldest {
            break;
        }
        let Some(k) = queue.events.get(&seq) else {
            queue.ageing.remove(&(start, seq));
            continue;
        };
        let a = queue.attempts.get(&seq);
        let reason = match (k.slot, a) {
            (Slot::Ready, Some(a)) if !a.last_error.is_empty() => a.last_error.as_str(),
            (Slot::Ready, _) => "too old",
            _ => "waiting behind an undelivered event",
        };
        let payment_id = k.event.payment_id.clone();
        park(&**store, seq, k.event.clone(), a.map_or(0, |a| a.count), reason, now).await?;
        // Nothing more of its payment goes until a replay.
        queue.blocked.insert(payment_id);
        queue.remove(seq);
        engine.events_settled.send_modify(|n| *n += 1);
        parked_any = true;
    }
    if parked_any {
        // Park records are not urgent enough for their own flush; the next commit carries them.
        tracing::warn!("webhook events parked; list them with the admin API");
    }
    let start = pick(&queue.ready, lanes, running, policy);
    // Look again when the next backoff ends, or (no sooner than a second from now, so a clock
    // that does not move is not polled) when the next event becomes too old.
    let backoff = queue.due.first().map(|(at, _)| at.saturating_duration_since(mono));
    let ageing = queue.ageing.first().map(|(start, _)| {
        (*start - oldest).to_std().unwrap_or_default().max(Duration::from_secs(1))
    });
    let next = match (backoff, ageing) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Plan { start, next })
}

async fn park<S: Store>(
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
    store.park(seq, &p).await
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
            poll: None,
        }
    }

    /// Ready events per partner: event `i` (oldest first) is `partners[i]`'s.
    fn ready(partners: &[&str]) -> HashMap<String, BTreeSet<EventSeq>> {
        let mut ready: HashMap<String, BTreeSet<EventSeq>> = HashMap::new();
        for (i, p) in partners.iter().enumerate() {
            ready.entry((*p).to_owned()).or_default().insert(i as EventSeq);
        }
        ready
    }

    #[test]
    fn a_partner_with_a_backlog_takes_turns_and_holds_at_most_its_lane() {
        // A wrote six events before B's two: B's still go out in the first round.
        let events = ready(&["a", "a", "a", "a", "a", "a", "b", "b"]);
        let started = pick(&events, &HashMap::new(), 0, &policy(4, 2));
        assert_eq!(started, vec![0, 6, 1, 7]);
    }

    #[test]
    fn a_stalled_partner_at_its_cap_gets_nothing_more_and_others_still_start() {
        let lanes = HashMap::from([("a".to_owned(), 2)]);
        let started = pick(&ready(&["a", "a", "b", "a", "b", "b"]), &lanes, 2, &policy(8, 2));
        assert_eq!(started, vec![2, 4]);
    }

    #[test]
    fn a_partner_with_nothing_under_way_always_gets_one() {
        // Stalled partners fill every slot of `concurrency`; B and C still get one each, no more.
        let lanes = HashMap::from([("a".to_owned(), 2), ("z".to_owned(), 2)]);
        let started = pick(&ready(&["b", "b", "c", "a"]), &lanes, 4, &policy(4, 2));
        assert_eq!(started, vec![0, 2]);
    }

    #[test]
    fn the_total_stays_within_concurrency_otherwise() {
        let started =
            pick(&ready(&["a", "b", "c", "a", "b", "c"]), &HashMap::new(), 0, &policy(4, 4));
        assert_eq!(started, vec![0, 1, 2, 3]);
    }
}
