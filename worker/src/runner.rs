//! The runner: reads job ids from the queue and runs the jobs, at most `WORKER_CONCURRENCY`
//! at once, each read batch through the executor.
//!
//! A slot is a permit of one semaphore; the reader reads at most as many entries as slots
//! are free. It lets go of them while its read blocks, so that the relay can take them for
//! the jobs it starts and hands over ([`HandOff`]); the reader then waits for slots for what
//! it read (held meanwhile, so their leases are renewed). Beside the reader run the rescuer
//! (heartbeat and take-back of expired leases) and the promoter of delayed jobs.
//!
//! On shutdown it stops reading and taking back, lets running jobs finish within the grace
//! period, then stops the handlers still running and waits until they have stopped, and only
//! then hands their jobs back (their attempt is given back too). Every batch, read or taken
//! back, runs in the one task tracker, so none is missed and none runs on after its hand-back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reviews_db::jobs::{self, StartedJob};
use reviews_db::Db;
use reviews_service::Backoff;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::Completer;
use crate::executor::{Executor, Held};
use crate::jobs::JobRegistry;
use crate::promoter::{DelayedBell, Promoter};
use crate::queue::{is_missing_group, Delivery, JobQueue};
use crate::rescuer::Rescuer;
use crate::retry::RetryPolicies;
use crate::stats::RunnerStats;

/// How long one blocking read waits before it is issued again.
const READ_BLOCK: Duration = Duration::from_secs(5);

/// How long what a read returned may wait for slots the relay took meanwhile.
const SLOT_WAIT: Duration = Duration::from_millis(10);

/// How long the reader waits for half its slots to free up before reading with fewer.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// How the runner paces itself (from the worker's `Tuning`).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub concurrency: usize,
    pub lease: Duration,
    pub job_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The promoter's longest sleep.
    pub poll_interval: Duration,
}

pub struct Runner {
    queue: Arc<JobQueue>,
    executor: Executor,
    consumer: String,
    settings: RunnerSettings,
    delayed_bell: DelayedBell,
    slots: Arc<Semaphore>,
    /// Whether the reader's last read left nothing unread (see [`HandOff`]).
    reads: QueueReads,
    pub stats: Arc<RunnerStats>,
}

impl Runner {
    /// Call within a tokio runtime (the completer's task starts here).
    pub fn new(
        db: Db,
        queue: Arc<JobQueue>,
        registry: JobRegistry,
        policies: RetryPolicies,
        settings: RunnerSettings,
    ) -> Self {
        let stats = Arc::<RunnerStats>::default();
        let delayed_bell = DelayedBell::default();
        let completer = Completer::start(
            db.clone(),
            queue.clone(),
            stats.clone(),
            delayed_bell.clone(),
        );
        Runner {
            executor: Executor {
                db,
                registry,
                policies,
                completer,
                job_timeout: settings.job_timeout,
                stats: stats.clone(),
                held: Held::default(),
                tasks: TaskTracker::new(),
                stop_jobs: CancellationToken::new(),
            },
            queue,
            consumer: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            reads: QueueReads::default(),
            settings,
            delayed_bell,
            stats,
        }
    }

    /// The relay's way to this runner's free slots.
    pub fn hand_off(&self) -> HandOff {
        HandOff {
            slots: self.slots.clone(),
            executor: self.executor.clone(),
            consumer: self.consumer.clone(),
            reads: self.reads.clone(),
            outbox_behind: Arc::default(),
        }
    }

    /// The bell that wakes this worker's promoter: ring it after putting a job in the
    /// queue's delayed set.
    pub fn delayed_bell(&self) -> DelayedBell {
        self.delayed_bell.clone()
    }

    /// Runs until `shutdown`, then drains: see the module docs.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = self.slots.clone();
        let rescuer = Arc::new(Rescuer {
            queue: self.queue.clone(),
            executor: self.executor.clone(),
            held: self.executor.held.clone(),
            consumer: self.consumer.clone(),
            lease: self.settings.lease,
        });
        let promoter = Promoter {
            queue: self.queue.clone(),
            bell: self.delayed_bell.clone(),
            poll_interval: self.settings.poll_interval,
        };
        // Heartbeats go on until every held job is settled or handed back.
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = tokio::spawn(rescuer.clone().heartbeat(stop_heartbeat.clone()));
        let promoting = tokio::spawn(promoter.run(shutdown.clone()));
        self.read_loop(&slots, &rescuer, &shutdown).await;

        // Shutdown: no new reads or take-backs; running jobs may finish within the grace.
        let _ = promoting.await;
        let tasks = &self.executor.tasks;
        tasks.close();
        if tokio::time::timeout(self.settings.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            self.executor.stop_jobs.cancel();
            tasks.wait().await;
        }
        // What is still held never ran to an end: its handler stopped, or its outcome
        // could not be recorded.
        self.hand_back_held().await;
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        tracing::info!("runner stopped");
    }

    async fn read_loop(
        &self,
        slots: &Arc<Semaphore>,
        rescuer: &Rescuer,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::reconnecting();
        let mut connection = None;
        // Take-back: every half lease, and again at once while a scan fills every slot.
        let take_back_every = self.settings.lease / 2;
        let mut next_take_back = tokio::time::Instant::now();
        let mut take_back_cursor = String::from("0-0");
        // A read blocks at most half a lease, so take-back comes round at least that often.
        let read_block = READ_BLOCK.min(take_back_every);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore closed"),
            };
            let mut permits = self.gather_slots(slots, first).await;
            if tokio::time::Instant::now() >= next_take_back {
                permits = rescuer.take_back(permits, &mut take_back_cursor).await;
                if permits.is_empty() {
                    continue; // every slot took a job back: there may be more
                }
                next_take_back = tokio::time::Instant::now() + take_back_every;
            }
            if connection.is_none() {
                match self.queue.blocking_connection().await {
                    Ok(conn) => connection = Some(conn),
                    Err(error) => {
                        pause(&mut backoff, "cannot connect to Redis", &error, shutdown).await;
                        continue;
                    }
                }
            }
            let conn = connection.as_mut().expect("connected above");
            let count = permits.len();
            // Free while the read blocks: the relay may start jobs in them meanwhile.
            drop(permits);
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = self.queue.read(conn, &self.consumer, count, read_block) => read,
            };
            match read {
                Ok(deliveries) => {
                    backoff.reset();
                    self.reads.done(deliveries.len() < count);
                    if deliveries.is_empty() {
                        continue;
                    }
                    self.run_read(deliveries, slots).await;
                }
                Err(error) if is_missing_group(&error) => {
                    tracing::warn!(
                        "the queue's stream is gone (Redis lost its data); recreating it"
                    );
                    if let Err(error) = self.queue.ensure_group().await {
                        let what = "cannot create the consumer group";
                        pause(&mut backoff, what, &error, shutdown).await;
                    }
                }
                Err(error) => {
                    // A fresh connection next time: this one failed, or hangs.
                    connection = None;
                    pause(&mut backoff, "reading the queue failed", &error, shutdown).await;
                }
            }
        }
    }

    /// Runs what a read returned. Its slots were free when the read began, but the relay may
    /// have taken some for its hand-off meanwhile: what gets no slot within [`SLOT_WAIT`]
    /// goes back to the queue at once, for this or another runner, rather than wait here
    /// for jobs to end (held meanwhile, so that its lease is renewed).
    async fn run_read(&self, mut deliveries: Vec<Delivery>, slots: &Arc<Semaphore>) {
        self.executor.held.insert(&deliveries);
        let mut permits = Vec::with_capacity(deliveries.len());
        let deadline = tokio::time::Instant::now() + SLOT_WAIT;
        while permits.len() < deliveries.len() {
            match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
                Ok(permit) => permits.push(permit.expect("semaphore closed")),
                Err(_) => break,
            }
        }
        let without_slot = deliveries.split_off(permits.len());
        if !deliveries.is_empty() {
            self.executor.spawn_batch(deliveries, permits);
        }
        self.executor.held.release(&without_slot);
        for delivery in without_slot {
            if let Err(error) = self.queue.hand_back(&delivery, &self.consumer).await {
                tracing::warn!(job.id = delivery.job_id, error = %error,
                    "could not hand back a job read without a slot; it returns when its lease expires");
            }
        }
    }

    /// Takes the free slots that come with `first`. While jobs run back to back, slots free
    /// up one at a time; reading (and starting) one job per slot would cost a statement per
    /// job, so when fewer than half the slots are free this waits a moment (at most
    /// [`GATHER_WAIT`]) for more. An idle runner has all its slots free and does not wait.
    async fn gather_slots(
        &self,
        slots: &Arc<Semaphore>,
        first: OwnedSemaphorePermit,
    ) -> Vec<OwnedSemaphorePermit> {
        let mut permits = vec![first];
        let enough = self.settings.concurrency.div_ceil(2);
        let deadline = tokio::time::Instant::now() + GATHER_WAIT;
        loop {
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            if permits.len() >= enough {
                return permits;
            }
            match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
                Ok(permit) => permits.push(permit.expect("semaphore closed")),
                Err(_) => return permits,
            }
        }
    }

    /// Hands back the deliveries still held once no job runs: the attempt in Postgres (if
    /// still this runner's), then the stream entry (if still this runner's).
    async fn hand_back_held(&self) {
        for held in self.executor.held.drain() {
            let delivery = &held.delivery;
            let given_back = async {
                if let Some(attempt) = held.attempt {
                    let conn = self.executor.db.conn().await?;
                    if !jobs::hand_back_job(&conn, attempt).await? {
                        // Another runner took it over: nothing of it is ours to give.
                        return anyhow::Ok(false);
                    }
                }
                Ok(self.queue.hand_back(delivery, &self.consumer).await?)
            };
            match given_back.await {
                Ok(true) => tracing::info!(job.id = delivery.job_id, "handed a job back"),
                Ok(false) => tracing::info!(
                    job.id = delivery.job_id,
                    "not handing back a job another runner took over"
                ),
                Err(error) => tracing::warn!(
                    job.id = delivery.job_id,
                    error = format!("{error:#}"),
                    "could not hand a job back; it returns when its lease expires"
                ),
            }
        }
    }
}

/// The relay's way to a runner's free slots: it takes some before its statement, starts that
/// many of the jobs it makes, takes their leases in its enqueue's round trip, and hands them
/// to the runner's executor. Nothing waits here.
#[derive(Clone)]
pub struct HandOff {
    slots: Arc<Semaphore>,
    executor: Executor,
    consumer: String,
    reads: QueueReads,
    /// The relay's last batch was full: a backlog of events waits (a drain, a burst). Its
    /// jobs go through the queue, where the reader takes them many to a statement.
    outbox_behind: Arc<AtomicBool>,
}

/// Slots the relay took, and a place in the runner's task tracker: a shutdown waits for
/// the jobs they are for.
pub struct Reserved {
    permits: OwnedSemaphorePermit,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Reserved {
    pub fn slots(&self) -> usize {
        self.permits.num_permits()
    }

    /// Frees all but `wanted` slots (the jobs the statement started); false when none is
    /// left to keep.
    pub fn keep(&mut self, wanted: usize) -> bool {
        if wanted == 0 {
            return false;
        }
        if let Some(surplus) = self.permits.split(self.slots().saturating_sub(wanted)) {
            drop(surplus);
        }
        true
    }
}

impl HandOff {
    /// Up to `most` free slots; none when no slot is free, when the queue has entries no
    /// runner read yet (they go first), when events wait behind the relay's last batch, or
    /// when the runner is shutting down.
    pub fn reserve(&self, most: usize) -> Option<Reserved> {
        if !self.reads.caught_up() || self.outbox_behind.load(Ordering::Relaxed) {
            return None;
        }
        // The token first: a shutdown that closes the tracker after this check waits for it.
        let task = self.executor.tasks.token();
        if self.executor.tasks.is_closed() {
            return None;
        }
        let free = self.slots.available_permits().min(most);
        let permits = self
            .slots
            .clone()
            .try_acquire_many_owned(u32::try_from(free).ok().filter(|n| *n > 0)?)
            .ok()?;
        Some(Reserved {
            permits,
            _task: task,
        })
    }

    /// The consumer that takes the leases of the jobs handed over.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Whether the relay's last batch was full (events wait behind it): no hand-off then.
    pub fn outbox_behind(&self, behind: bool) {
        self.outbox_behind.store(behind, Ordering::Relaxed);
    }

    /// How many reads the runner has completed: take it before an enqueue, for
    /// [`HandOff::queue_behind`].
    pub fn reads(&self) -> u64 {
        self.reads.count()
    }

    /// Entries wait unread in the queue (a hand-off was refused, or the relay enqueued jobs
    /// as usual): no hand-off until the reader has caught up. `reads_before` is
    /// [`HandOff::reads`] from before the enqueue: a read that ended since may have taken
    /// those very entries (a blocked read wakes on them, often before the enqueue's reply
    /// arrives), so its word stands; should it be wrong, the queue refuses the next hand-off.
    pub fn queue_behind(&self, reads_before: u64) {
        self.reads.behind_unless_read_since(reads_before);
    }

    /// Runs `started` (at most as many as `reserved` has slots; the rest are freed).
    pub fn run(&self, reserved: Reserved, started: Vec<(Delivery, StartedJob)>) {
        let mut permits = one_by_one(reserved.permits);
        permits.truncate(started.len());
        if !started.is_empty() {
            self.executor.spawn_started(started, permits);
        }
    }
}

/// What the runner's reader last learned about the queue: how many reads it has completed
/// (the high bits) and whether the last one got fewer entries than it asked for, so that the
/// group had delivered every entry (the low bit). One word, so that the relay's "behind"
/// and the reader's "caught up" apply in the order they happen.
#[derive(Clone)]
struct QueueReads(Arc<AtomicU64>);

impl Default for QueueReads {
    fn default() -> Self {
        QueueReads(Arc::new(AtomicU64::new(1))) // no read yet, nothing enqueued: caught up
    }
}

impl QueueReads {
    fn done(&self, caught_up: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some((((state >> 1) + 1) << 1) | u64::from(caught_up))
            });
    }

    fn caught_up(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire) >> 1
    }

    fn behind_unless_read_since(&self, reads: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state >> 1 == reads).then_some(state & !1)
            });
    }
}

/// One permit per slot.
fn one_by_one(mut permits: OwnedSemaphorePermit) -> Vec<OwnedSemaphorePermit> {
    let mut each = Vec::with_capacity(permits.num_permits());
    while permits.num_permits() > 1 {
        each.push(permits.split(1).expect("more than one permit"));
    }
    each.push(permits);
    each
}

/// Logs why the reader waits, then waits (or until shutdown).
async fn pause(
    backoff: &mut Backoff,
    what: &str,
    error: &(dyn std::fmt::Display + Sync),
    shutdown: &CancellationToken,
) {
    let delay = backoff.next_delay();
    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "{what}; retrying");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
