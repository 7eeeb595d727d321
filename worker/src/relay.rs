//! The relay: moves outbox events into jobs and the jobs' ids into the queue.
//!
//! It claims pending events in batches (`for update skip locked`, so several workers share
//! the work), creates their jobs and takes them off `outbox_pending` in one statement, then
//! enqueues the job ids in one Redis round trip (rating recomputes held back by the
//! recompute interval go to the delayed set). If the enqueue fails, the jobs are still
//! pending in Postgres and reconciliation enqueues them: delivery is at least once.
//!
//! The hand-off (`RELAY_HAND_OFF`, on by default: see docs/PERFORMANCE.md): when this
//! worker's runner has free slots, the queue holds no unread entry and the last batch was not
//! full (no backlog of events), the relay takes those slots first and its statement creates that
//! many jobs started (their first attempt recorded, as a start statement would). The enqueue
//! adds them and reads them for this runner in the same round trip, so their leases are in
//! Redis as for any read, and the runner's executor runs them: no queue read, no start
//! statement between the claim and the handler. If the queue has unread entries by then,
//! the enqueue refuses them; their attempts are given back and they are enqueued as usual.
//!
//! When it runs out of work (a batch smaller than the batch size) it tries to go to sleep
//! (`doorbell`), never waiting for a writer. Asleep, it looks once more (writers that found it
//! awake have committed by then) and waits for the bell, or the slow poll, the safety net for
//! a missed bell. When a writer is in flight it cannot sleep: it looks again at the timer's
//! next millisecond tick if its last round of looks found events (under steady writes a
//! writer is nearly always in flight, and more events commit meanwhile: the pause makes the
//! next batch larger), 1 ms after rounds that found nothing, and, once nothing has been
//! found for 25 ms (a writer holding its transaction open), on a timer doubling to 50 ms.
//! So each event found behind such a writer buys 25 ms of looks a millisecond or two apart
//! (two statements each): bounded, and visible in the metrics.
//!
//! Under load it lingers (`RELAY_LINGER`, `RELAY_LINGER_ABOVE`): while the events it relays
//! come faster than a rate (measured over windows of at least 20 ms; once lingering, until
//! they come slower than three quarters of it), it waits longer after a round that found
//! events, so the next batch gathers more. Much of what a batch costs Postgres is per batch,
//! not per event (the claim, a rating job, a notify job, their completions: ~1.8 ms a batch
//! against ~70 µs an event on the development machine, docs/PERFORMANCE.md run P), so under
//! a flat-out load larger batches give the writers back much of the worker's CPU. The rate
//! is measured over the linger too, so lingering ends with the load; below the rate (the
//! 1,000/s latency target's load, say) it never starts (docs/PERFORMANCE.md, run M).
//!
//! While it lingers it does not try to sleep: under such a load a writer is nearly always in
//! flight, so the try (a statement on the listener's connection, each batch) would fail, and
//! it looks again after the linger anyway. Asleep, every writer would ring, and each bell
//! would cut a linger short.
//!
//! The `relay_looks_total`, `relay_looks_found_nothing_total`, `relay_sleep_tries_total`,
//! `relay_sleeps_total` (times it went to sleep, or found another relay asleep) and
//! `relay_look_again_wait_seconds` (the rests it chose while it could not sleep) metrics
//! show how it spends its time; the bench prints them per phase. Reconciliation runs apart,
//! on its own cadence (`reconciler`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reviews_db::jobs::{hand_back_jobs, StartedJob};
use reviews_db::outbox::{relay_and_start, RelayConstants, RelayStatements};
use reviews_db::{Bookkeeping, Db};
use reviews_service::Backoff;
use tokio_util::sync::CancellationToken;

use crate::config::NotifyPayload;
use crate::doorbell::{Doorbell, Nap};
use crate::jobs::notify_owner::NotifyOwner;
use crate::jobs::{JobKind, JobRegistry};
use crate::listener::Bells;
use crate::promoter::DelayedBell;
use crate::queue::{Handed, JobQueue};
use crate::runner::{HandOff, Reserved};

/// How soon a relay that cannot sleep (a writer is in flight) looks again after looks that
/// found nothing…
const LOOK_AGAIN_FIRST: Duration = Duration::from_millis(1);
/// …for as long as its last look that found events is this recent: under steady writes, when
/// commits wait behind slow WAL flushes, looks find nothing for a few milliseconds at a time,
/// and a longer rest would only add to every event's wait…
const LOOK_AGAIN_PATIENCE: Duration = Duration::from_millis(25);
/// …and after that, doubling up to this: a writer holding its transaction open. How late an
/// event can be relayed while that lasts.
const LOOK_AGAIN_CAP: Duration = Duration::from_millis(50);

/// How a relay gathers larger batches under load (`RELAY_LINGER`, `RELAY_LINGER_ABOVE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linger {
    /// How long it waits before its next look…
    pub wait: Duration,
    /// …after a round of looks that found events, while the events it relays come faster
    /// than this (events per second, over windows of [`LINGER_RATE_WINDOW`] or longer;
    /// once lingering, until they come slower than [`LINGER_STOPS_BELOW`] of it). A zero
    /// wait never lingers, whatever the rate.
    pub above: f64,
}

impl Linger {
    /// Never lingers: the next look comes at the timer's next tick after any events.
    pub const OFF: Linger = Linger {
        wait: Duration::ZERO,
        above: f64::INFINITY,
    };
}

/// The rate that decides whether the relay lingers is measured over windows at least this
/// long: over a round or two, a few writers committing together look like a load.
pub const LINGER_RATE_WINDOW: Duration = Duration::from_millis(20);

/// Lingering, the relay stops once the events come slower than this share of
/// [`Linger::above`].
pub const LINGER_STOPS_BELOW: f64 = 0.75;

/// When a relay that cannot sleep looks again (see the module docs).
struct LookAgain {
    backoff: Backoff,
    found_events_at: Instant,
    linger: Linger,
    /// Whether it lingers: the last window's events came faster than the linger's rate (or,
    /// lingering already, than three quarters of it), and the linger has a wait.
    lingering: bool,
    /// The window being measured: when it began, and the events relayed since.
    window_began_at: Instant,
    window_events: i64,
}

impl LookAgain {
    fn new(now: Instant, linger: Linger) -> Self {
        LookAgain {
            backoff: Backoff::new(LOOK_AGAIN_FIRST, LOOK_AGAIN_CAP),
            found_events_at: now,
            linger,
            lingering: false,
            window_began_at: now,
            window_events: 0,
        }
    }

    /// The rest before the next look, at `now`, after looks that relayed `relayed` events.
    fn after(&mut self, relayed: i64, now: Instant) -> Duration {
        self.measure(relayed, now);
        if relayed > 0 {
            self.found_events_at = now;
            self.backoff.reset();
            if self.lingering {
                // Events come faster than the linger's rate: gather more into the next batch.
                return self.linger.wait;
            }
            // More are likely committing: look again at the timer's next tick (under 1 ms).
            return Duration::ZERO;
        }
        if now.duration_since(self.found_events_at) < LOOK_AGAIN_PATIENCE {
            self.backoff.reset();
        }
        self.backoff.next_delay()
    }

    /// Counts a round's events into the window; a window that has lasted long enough
    /// decides whether the relay lingers until the next one does. Lingers count in the
    /// window's time, so lingering ends with the load rather than keeping itself going.
    fn measure(&mut self, relayed: i64, now: Instant) {
        self.window_events += relayed;
        let elapsed = now.duration_since(self.window_began_at);
        if elapsed >= LINGER_RATE_WINDOW {
            let rate = self.window_events as f64 / elapsed.as_secs_f64();
            // Once lingering, it stops below three quarters of the rate: a load that hovers
            // about the rate (a slow hour's flat-out rate on a small machine, say) would
            // otherwise linger in some windows and not in others, and every window without
            // costs it more Postgres time per event, which slows it further.
            let above = if self.lingering {
                self.linger.above * LINGER_STOPS_BELOW
            } else {
                self.linger.above
            };
            self.lingering = rate > above && !self.linger.wait.is_zero();
            self.window_began_at = now;
            self.window_events = 0;
        }
    }

    /// It woke from a sleep: the writers it slept through have ended.
    fn reset(&mut self, now: Instant) {
        *self = LookAgain::new(now, self.linger);
    }
}

/// What one relay pass found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    Relayed { events: i64 },
    Idle,
}

pub struct Relay {
    pub db: Db,
    pub queue: Arc<JobQueue>,
    pub doorbell: Doorbell,
    pub bells: Bells,
    /// The slow poll: how late a missed bell can make an event.
    pub poll_interval: Duration,
    /// The claiming statements, made for the registry's kinds with the worker's batch size
    /// and recompute interval written in (see [`statements_for`]).
    pub statements: RelayStatements,
    /// Rung when jobs go to the queue's delayed set (see `promoter`).
    pub delayed_bell: DelayedBell,
    /// This worker's runner, to hand started jobs to (none: every job goes through the queue).
    pub hand_off: Option<HandOff>,
    /// How it gathers larger batches under load.
    pub linger: Linger,
}

/// The relay's statements for the kinds `registry` makes jobs of, claiming `batch_size`
/// events each, holding rating recomputes back by `recompute_interval` and committing as
/// `bookkeeping` says; notify jobs carry their events' outbox ids.
pub fn statements_for(
    registry: &JobRegistry,
    batch_size: i64,
    recompute_interval: Duration,
    bookkeeping: Bookkeeping,
) -> RelayStatements {
    statements_with(
        registry,
        batch_size,
        recompute_interval,
        bookkeeping,
        NotifyPayload::OutboxIds,
    )
}

/// [`statements_for`], with notify jobs carrying what `notify_payload` says.
pub fn statements_with(
    registry: &JobRegistry,
    batch_size: i64,
    recompute_interval: Duration,
    bookkeeping: Bookkeeping,
    notify_payload: NotifyPayload,
) -> RelayStatements {
    RelayStatements::new(
        registry.relayed_kinds().iter().map(|kind| {
            let whole = kind.name == NotifyOwner::NAME && notify_payload == NotifyPayload::Events;
            let from_events = if whole {
                NotifyOwner::FROM_EVENTS_WHOLE
            } else {
                kind.from_events
            };
            (kind.name, from_events)
        }),
        RelayConstants {
            batch_size,
            recompute_interval,
            bookkeeping,
        },
    )
}

impl Relay {
    /// Relays one batch of pending events.
    pub async fn relay_batch(&self) -> anyhow::Result<RelayOutcome> {
        let limit = self.statements.batch_size();
        let mut reserved = self
            .hand_off
            .as_ref()
            .and_then(|h| h.reserve(limit as usize));
        let start = reserved.as_ref().map_or(0, |r| r.slots() as i64);
        let batch = {
            let conn = self.db.conn().await?;
            relay_and_start(&conn, &self.statements, start).await?
        };
        if let Some(hand_off) = &self.hand_off {
            hand_off.outbox_behind(batch.events >= limit);
        }
        // The slots no started job needs go back to the runner's reader at once.
        if !reserved
            .as_mut()
            .is_some_and(|r| r.keep(batch.started.len()))
        {
            reserved = None;
        }
        if batch.events == 0 {
            return Ok(RelayOutcome::Idle);
        }
        tracing::debug!(
            batch.size = batch.events,
            jobs = batch.job_ids.len(),
            started = batch.started.len(),
            held_back = batch.held_back.len(),
            "relayed events"
        );
        let jobs = batch.job_ids.len() + batch.held_back.len() + batch.started.len();
        metrics::counter!("relay_batches_total").increment(1);
        metrics::counter!("relay_events_total").increment(batch.events as u64);
        metrics::counter!("relay_jobs_total").increment(jobs as u64);
        let started_ids: Vec<i64> = batch.started.iter().map(|job| job.id).collect();
        let consumer = self.hand_off.as_ref().map_or("", |h| h.consumer());
        let reads_before = self.hand_off.as_ref().map_or(0, |h| h.reads());
        let enqueued = self
            .queue
            .hand_off_and_enqueue(consumer, &started_ids, &batch.job_ids, &batch.held_back)
            .await;
        if !batch.held_back.is_empty() && enqueued.is_ok() {
            self.delayed_bell.ring();
        }
        let refused = matches!(enqueued, Ok((_, Handed::Refused)));
        if let Some(hand_off) = &self.hand_off {
            // Jobs enqueued as usual wait unread: they go before any hand-off.
            if refused || (enqueued.is_ok() && !batch.job_ids.is_empty()) {
                hand_off.queue_behind(reads_before);
            }
        }
        match enqueued {
            Ok((_, Handed::Delivered(deliveries))) => {
                self.run_handed_over(reserved, batch.started, deliveries)
                    .await
            }
            Ok((_, Handed::Refused)) => {
                drop(reserved);
                metrics::counter!("relay_hand_offs_refused_total").increment(1);
                self.enqueue_instead(batch.started).await;
            }
            // The jobs are safe in Postgres; reconciliation will enqueue them.
            Err(error) => {
                drop(reserved);
                tracing::warn!(error = %error, jobs,
                    "could not enqueue relayed jobs; reconciliation will");
                // Started ones too, with their attempts given back (if the enqueue did take
                // their leases after all, they are taken back when the leases expire).
                self.give_back(&batch.started).await;
            }
        }
        Ok(RelayOutcome::Relayed {
            events: batch.events,
        })
    }

    /// Hands the started jobs, now leased to this worker's runner, to it.
    async fn run_handed_over(
        &self,
        reserved: Option<Reserved>,
        mut started: Vec<StartedJob>,
        deliveries: Vec<crate::queue::Delivery>,
    ) {
        let (Some(hand_off), Some(reserved)) = (&self.hand_off, reserved) else {
            return; // nothing was started
        };
        let mut handed = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Some(at) = started.iter().position(|job| job.id == delivery.job_id) {
                handed.push((delivery, started.swap_remove(at)));
            }
        }
        hand_off.run(reserved, handed);
        if !started.is_empty() {
            // The queue held them already: a reconciler queued them between this relay's
            // commit and its enqueue, and another runner may have started them since. Their
            // attempts are given back (unless that runner's start came first) and they stay
            // the queue's, like any other job.
            tracing::info!(
                jobs = started.len(),
                "started jobs were queued before their hand-off; the queue runs them"
            );
            self.enqueue_instead(started).await;
        }
    }

    /// Gives back the attempts of started jobs that could not be handed over, then enqueues
    /// them like any other job.
    async fn enqueue_instead(&self, started: Vec<StartedJob>) {
        if started.is_empty() {
            return;
        }
        self.give_back(&started).await;
        let ids: Vec<i64> = started.iter().map(|job| job.id).collect();
        if let Err(error) = self.queue.enqueue(&ids).await {
            tracing::warn!(error = %error, jobs = ids.len(),
                "could not enqueue relayed jobs; reconciliation will");
        }
    }

    /// Gives back the attempts of started jobs no runner holds: they were never run.
    async fn give_back(&self, started: &[StartedJob]) {
        if started.is_empty() {
            return;
        }
        let attempts: Vec<_> = started.iter().map(StartedJob::fencing).collect();
        let given_back = async {
            let conn = self.db.conn().await?;
            anyhow::Ok(hand_back_jobs(&conn, &attempts).await?)
        };
        if let Err(error) = given_back.await {
            // They run later as their next attempt; a job with one attempt only goes to its
            // dead letter (replayable), as after a crash between its start and its handler.
            tracing::warn!(
                error = format!("{error:#}"),
                jobs = attempts.len(),
                "could not give back the attempts of jobs not handed over"
            );
        }
    }

    /// Relays until there is nothing left; returns how many events. A batch smaller than the
    /// batch size emptied the outbox as its statement saw it (rows another relay holds are
    /// that relay's): looking again at once would find only what committed since, which the
    /// next look finds as well, so the drain ends there.
    async fn drain(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        loop {
            let outcome = self.relay_batch().await?;
            metrics::counter!("relay_looks_total").increment(1);
            let RelayOutcome::Relayed { events } = outcome else {
                metrics::counter!("relay_looks_found_nothing_total").increment(1);
                return Ok(total);
            };
            total += events;
            if events < self.statements.batch_size() {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown`: drain, try to sleep, wait for the bell (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = Backoff::reconnecting();
        let mut look_again = LookAgain::new(Instant::now(), self.linger);
        let mut nap = Ok((Nap::KeepLooking, 0));
        loop {
            let rest = match &nap {
                Ok((Nap::Asleep | Nap::AnotherRelaySleeps, _)) => {
                    failures.reset();
                    self.poll_interval
                }
                Ok((Nap::KeepLooking, relayed)) => {
                    failures.reset();
                    let rest = look_again.after(*relayed, Instant::now());
                    metrics::histogram!("relay_look_again_wait_seconds").record(rest.as_secs_f64());
                    rest
                }
                Err(error) => {
                    let delay = failures.next_delay();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "relay failed; retrying"
                    );
                    delay
                }
            };
            // Even a rest of zero goes through the timer, which ends it at its next millisecond
            // tick: that pause lets the next batch gather the events committing meanwhile
            // (skipping it cost a fifth of the sustained rate: docs/PERFORMANCE.md, run L).
            let rang = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.bells.outbox.notified() => true,
                _ = tokio::time::sleep(rest) => false,
            };
            if !rang && matches!(nap, Ok((Nap::Asleep, _))) {
                // The slow poll, asleep: look without waking; wake only if there is work.
                match self.drain().await {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "relay's poll failed")
                    }
                }
            }
            if matches!(nap, Ok((Nap::Asleep | Nap::AnotherRelaySleeps, _))) {
                // Patient from the wake-up: the writers it slept through have ended.
                look_again.reset(Instant::now());
            }
            nap = self.wake_and_work(look_again.lingering).await;
            if matches!(nap, Ok((Nap::Asleep | Nap::AnotherRelaySleeps, _))) {
                metrics::counter!("relay_sleeps_total").increment(1);
            }
        }
        if let Err(error) = self.doorbell.wake().await {
            tracing::debug!(error = format!("{error:#}"), "could not wake on shutdown");
        }
    }

    /// Wakes (writers stop ringing), drains the outbox, then tries to sleep again; asleep, it
    /// looks once more, since every writer that found it awake has ended by then. Returns
    /// how it rests, and how many events it relayed. While it lingers it does not try to
    /// sleep (see the module docs).
    async fn wake_and_work(&self, lingering: bool) -> anyhow::Result<(Nap, i64)> {
        let mut relayed = 0;
        loop {
            // The first look does not wait for the wake's round trip (on the listener's
            // connection): only the next try to sleep must come after it, and it does.
            let (woke, drained) = tokio::join!(self.doorbell.wake(), self.drain());
            woke?;
            relayed += drained?;
            if lingering {
                return Ok((Nap::KeepLooking, relayed));
            }
            metrics::counter!("relay_sleep_tries_total").increment(1);
            let nap = self.doorbell.try_to_sleep().await?;
            if nap != Nap::Asleep {
                return Ok((nap, relayed));
            }
            match self.drain().await? {
                0 => return Ok((nap, relayed)),
                more => relayed += more,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_relay_that_cannot_sleep_looks_again_at_the_next_tick_after_events_then_patiently_then_backs_off(
    ) {
        let start = Instant::now();
        let mut look_again = LookAgain::new(start, Linger::OFF);
        assert_eq!(look_again.after(7, start), Duration::ZERO);
        // Nothing found, but events were found recently: 1 ms every time.
        for at in [1, 5, 10, 24] {
            assert_eq!(look_again.after(0, start + ms(at)), ms(1), "at {at} ms");
        }
        // Nothing found for longer than the patience: doubling from there up to the cap.
        let rests: Vec<Duration> = (0..8)
            .map(|i| look_again.after(0, start + ms(26 + i)))
            .collect();
        assert_eq!(
            rests,
            [2, 4, 8, 16, 32, 50, 50, 50].map(ms),
            "a writer holding its transaction open"
        );
        // Events again: at the next tick, and patient again after.
        let later = start + ms(200);
        assert_eq!(look_again.after(1, later), Duration::ZERO);
        assert_eq!(look_again.after(0, later + ms(20)), ms(1));
        // After a sleep, patient from the wake-up.
        look_again.reset(later + ms(500));
        assert_eq!(look_again.after(0, later + ms(510)), ms(1));
        assert_eq!(look_again.after(0, later + ms(511)), ms(1));
    }

    #[test]
    fn a_relay_lingers_while_events_come_faster_than_its_rate_over_a_window_and_only_then() {
        let start = Instant::now();
        let linger = Linger {
            wait: ms(8),
            above: 2_000.0,
        };
        let mut look_again = LookAgain::new(start, linger);
        // 10 events within 3 ms: fast, but too short a window to call it a load.
        assert_eq!(look_again.after(10, start + ms(3)), Duration::ZERO);
        // 3,000/s over 21 ms: a load.
        assert_eq!(look_again.after(53, start + ms(21)), ms(8), "a load");
        // After the linger and the round's statements, still 3,000/s.
        assert_eq!(look_again.after(36, start + ms(33)), ms(8));
        assert_eq!(
            look_again.after(36, start + ms(45)),
            ms(8),
            "the load goes on"
        );
        // Nothing found after a linger: as patient as after any events.
        assert_eq!(look_again.after(0, start + ms(46)), ms(1));
        // 24 events in 24 ms: 1,000/s. The lingers gathered them; the load is over.
        assert_eq!(
            look_again.after(24, start + ms(57)),
            ms(8),
            "the window is open"
        );
        assert_eq!(look_again.after(0, start + ms(69)), ms(1));
        assert_eq!(
            look_again.after(5, start + ms(70)),
            Duration::ZERO,
            "a linger does not keep itself going"
        );
        // Exactly the rate is not faster than it.
        let mut look_again = LookAgain::new(start, linger);
        assert_eq!(look_again.after(40, start + ms(20)), Duration::ZERO);
        assert_eq!(look_again.after(41, start + ms(40)), ms(8));
        // Once lingering, a window a little slower than the rate does not stop it; one
        // slower than three quarters of it does.
        let mut look_again = LookAgain::new(start, linger);
        assert_eq!(look_again.after(60, start + ms(20)), ms(8), "3,000/s");
        assert_eq!(look_again.after(32, start + ms(40)), ms(8), "1,600/s");
        assert_eq!(
            look_again.after(29, start + ms(60)),
            Duration::ZERO,
            "1,450/s"
        );
        assert_eq!(
            look_again.after(32, start + ms(80)),
            Duration::ZERO,
            "not lingering: 1,600/s does not start it"
        );
        // Asleep, then awake: a new window, not lingering.
        look_again.reset(start + ms(500));
        assert_eq!(look_again.after(20, start + ms(505)), Duration::ZERO);
        let mut off = LookAgain::new(start, Linger::OFF);
        assert_eq!(off.after(10_000, start + ms(30)), Duration::ZERO);
        // RELAY_LINGER=0ms: no wait, and not lingering either (a lingering relay does not try
        // to sleep).
        let mut zero = LookAgain::new(
            start,
            Linger {
                wait: Duration::ZERO,
                above: 1.0,
            },
        );
        assert_eq!(zero.after(10_000, start + ms(30)), Duration::ZERO);
        assert!(!zero.lingering);
    }
}
