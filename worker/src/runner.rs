//! The runner: reads job ids from the queue and runs the jobs, at most `WORKER_CONCURRENCY`
//! at once.
//!
//! For each batch of deliveries it records the attempts in Postgres, in one statement,
//! *before* running the jobs (so a job that crashes its worker still reaches its dead
//! letter), runs each handler in a task of its own (a panic fails only that job) under a
//! timeout shorter than the lease, then records the outcome in Postgres and only then
//! acknowledges the delivery in Redis (successes in batches: see `completer`). While jobs
//! run, a heartbeat renews their leases; leases that expired elsewhere are taken back and run
//! here.
//!
//! On shutdown it stops reading, lets running jobs finish within the grace period, and hands
//! back the rest (their attempt is given back too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use reviews_db::jobs::{self, JobState, StartedJob};
use reviews_db::Db;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::completer::Completer;
use crate::jobs::{JobContext, JobError, JobHandlers};
use crate::queue::{is_missing_group, Delivery, JobQueue};
use crate::retry::{RetryPolicies, RetryPolicy};

/// Counters of what the runner did (read by metrics and tests).
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub taken_back: AtomicU64,
    pub skipped: AtomicU64,
    /// Statements that recorded attempts (one per batch of deliveries).
    pub start_batches: AtomicU64,
    /// Statements that recorded successes (one per batch: see `completer`).
    pub completion_batches: AtomicU64,
}

/// A delivery whose job started, with its slot.
type StartedDelivery = (Delivery, StartedJob, OwnedSemaphorePermit);

/// How a job's run ended.
#[derive(Debug)]
enum RunOutcome {
    Succeeded,
    Failed(JobError),
}

#[derive(Clone)]
pub struct Runner {
    pub db: Db,
    pub queue: Arc<JobQueue>,
    pub handlers: JobHandlers,
    pub policies: RetryPolicies,
    pub consumer: String,
    pub concurrency: usize,
    pub lease: Duration,
    pub job_timeout: Duration,
    pub shutdown_grace: Duration,
    pub poll_interval: Duration,
    pub stats: Arc<RunnerStats>,
    /// Deliveries this runner holds, by stream entry id.
    held: Arc<Mutex<HashMap<String, Delivery>>>,
    /// Rung when this runner schedules a retry, or this worker's relay holds a recompute back
    /// (see [`Runner::delayed_bell`]), so the promoter recomputes its sleep.
    retry_scheduled: Arc<Notify>,
    completer: Completer,
}

/// How long one blocking read waits before it is issued again.
const READ_BLOCK: Duration = Duration::from_secs(5);

/// How long the reader waits for half its slots to free up before reading with fewer.
const GATHER_WAIT: Duration = Duration::from_millis(2);

impl Runner {
    /// Call within a tokio runtime (the completer's task starts here).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        queue: Arc<JobQueue>,
        handlers: JobHandlers,
        policies: RetryPolicies,
        concurrency: usize,
        lease: Duration,
        job_timeout: Duration,
        shutdown_grace: Duration,
        poll_interval: Duration,
    ) -> Self {
        let stats = Arc::<RunnerStats>::default();
        Runner {
            completer: Completer::start(db.clone(), queue.clone(), stats.clone()),
            db,
            queue,
            handlers,
            policies,
            consumer: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            concurrency,
            lease,
            job_timeout,
            shutdown_grace,
            poll_interval,
            stats,
            held: Arc::default(),
            retry_scheduled: Arc::default(),
        }
    }

    /// The bell that wakes this runner's promoter of delayed jobs: ring it after putting a
    /// job in the queue's delayed set.
    pub fn delayed_bell(&self) -> Arc<Notify> {
        self.retry_scheduled.clone()
    }

    /// Runs until `shutdown`, then drains: see the module docs.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let stop_helpers = CancellationToken::new();
        let helpers = [
            tokio::spawn(self.clone().heartbeat(stop_helpers.clone())),
            tokio::spawn(self.clone().take_back(slots.clone(), stop_helpers.clone())),
            tokio::spawn(self.clone().promote(stop_helpers.clone())),
        ];
        let mut running = tokio::task::JoinSet::new();
        self.read_loop(&slots, &mut running, &shutdown).await;

        // Shutdown: no new reads; let running jobs finish within the grace period.
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            running.abort_all();
            while running.join_next().await.is_some() {}
            self.hand_back_held().await;
        }
        stop_helpers.cancel();
        for helper in helpers {
            let _ = helper.await;
        }
        tracing::info!("runner stopped");
    }

    async fn read_loop(
        &self,
        slots: &Arc<Semaphore>,
        running: &mut tokio::task::JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut connection = None;
        loop {
            // Reap finished tasks so the set does not grow.
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore closed"),
            };
            let mut permits = self.gather_slots(slots, first).await;
            if connection.is_none() {
                match self.queue.blocking_connection().await {
                    Ok(conn) => connection = Some(conn),
                    Err(error) => {
                        self.pause(&mut backoff, "cannot connect to Redis", &error, shutdown)
                            .await;
                        continue;
                    }
                }
            }
            let conn = connection.as_mut().expect("connected above");
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = self.queue.read(conn, &self.consumer, permits.len(), READ_BLOCK) => read,
            };
            match read {
                Ok(deliveries) => {
                    backoff.reset();
                    permits.truncate(deliveries.len());
                    if !deliveries.is_empty() {
                        self.spawn_batch(running, deliveries, permits);
                    }
                }
                Err(error) if is_missing_group(&error) => {
                    tracing::warn!(
                        "the queue's stream is gone (Redis lost its data); recreating it"
                    );
                    if let Err(error) = self.queue.ensure_group().await {
                        self.pause(
                            &mut backoff,
                            "cannot create the consumer group",
                            &error,
                            shutdown,
                        )
                        .await;
                    }
                }
                Err(error) => {
                    connection = None;
                    self.pause(&mut backoff, "reading the queue failed", &error, shutdown)
                        .await;
                }
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
        let enough = self.concurrency.div_ceil(2);
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

    async fn pause(
        &self,
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

    /// Starts a batch of deliveries (one statement records all their attempts), then runs
    /// each started job and settles it; each delivery's permit is freed when its job is.
    fn spawn_batch(
        &self,
        running: &mut tokio::task::JoinSet<()>,
        deliveries: Vec<Delivery>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        debug_assert_eq!(deliveries.len(), permits.len());
        {
            let mut held = self.held.lock().expect("held lock poisoned");
            for delivery in &deliveries {
                held.insert(delivery.entry_id.clone(), delivery.clone());
            }
        }
        let runner = self.clone();
        running.spawn(async move {
            let fallback_max = RetryPolicy::FALLBACK.max_attempts;
            let ids: Vec<i64> = deliveries.iter().map(|d| d.job_id).collect();
            runner.stats.start_batches.fetch_add(1, Ordering::Relaxed);
            let started = async {
                let conn = runner.db.conn().await?;
                anyhow::Ok(jobs::start_jobs(&conn, &ids, fallback_max).await?)
            };
            let mut started: HashMap<i64, StartedJob> = match started.await {
                Ok(jobs) => jobs.into_iter().map(|job| (job.id, job)).collect(),
                Err(error) => {
                    // The deliveries stay leased; when the leases expire they are taken back
                    // and tried again, so nothing is lost.
                    tracing::warn!(
                        jobs = ids.len(),
                        error = format!("{error:#}"),
                        "could not start jobs; they will be retried after their lease"
                    );
                    runner.release(&deliveries);
                    return;
                }
            };
            // Jobs of batched kinds run together, one handler call per kind; other jobs are
            // groups of one. Each settles on its own.
            let mut unstartable = Vec::new();
            let mut groups: Vec<Vec<StartedDelivery>> = Vec::new();
            let mut group_of_kind: HashMap<String, usize> = HashMap::new();
            for (delivery, permit) in deliveries.into_iter().zip(permits) {
                let Some(job) = started.remove(&delivery.job_id) else {
                    unstartable.push((delivery, permit));
                    continue;
                };
                let batched = runner.handlers.runs_in_batches(&job.kind);
                match group_of_kind.get(&job.kind) {
                    Some(&group) if batched => groups[group].push((delivery, job, permit)),
                    _ => {
                        if batched {
                            group_of_kind.insert(job.kind.clone(), groups.len());
                        }
                        groups.push(vec![(delivery, job, permit)]);
                    }
                }
            }
            let unstartable_runs = unstartable.into_iter().map(|(delivery, permit)| {
                let runner = runner.clone();
                async move {
                    let settled = runner.settle_unstartable(&delivery, fallback_max).await;
                    runner.let_go(&delivery, settled, permit);
                }
                .boxed()
            });
            let group_runs = groups.into_iter().map(|group| {
                let runner = runner.clone();
                async move { runner.run_group(group).await }.boxed()
            });
            futures::future::join_all(unstartable_runs.chain(group_runs)).await;
        });
    }

    /// Done with a delivery: settled, or (on error) left to its lease.
    fn let_go(
        &self,
        delivery: &Delivery,
        settled: anyhow::Result<()>,
        permit: OwnedSemaphorePermit,
    ) {
        if let Err(error) = settled {
            // The delivery stays leased; when the lease expires it is taken back and tried
            // again, so nothing is lost.
            tracing::warn!(
                job.id = delivery.job_id,
                error = format!("{error:#}"),
                "could not record a job's outcome; it will be retried after its lease"
            );
        }
        self.release(std::slice::from_ref(delivery));
        drop(permit);
    }

    /// Runs started jobs of one kind in one handler call (a group of one for kinds that do
    /// not run in batches), then settles each.
    async fn run_group(&self, mut group: Vec<StartedDelivery>) {
        let Some(kind) = group.first().map(|(_, job, _)| job.kind.clone()) else {
            return;
        };
        self.stats
            .started
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        metrics::counter!("job_attempts_total", "kind" => kind.clone())
            .increment(group.len() as u64);
        // Each job's span names the request that caused it (read from the payload, so made
        // before the payload moves to the handler: a notify job's lists a relay batch's events).
        let spans: Vec<tracing::Span> = group.iter().map(|(_, job, _)| job_span(job)).collect();
        let contexts = group
            .iter_mut()
            .map(|(_, job, _)| self.context(job))
            .collect();
        // The handler logs in the job's span, or for a batch in one naming its size.
        let span = match &spans[..] {
            [span] => span.clone(),
            _ => tracing::info_span!("jobs", job.kind = %kind, jobs = group.len()),
        };
        let started_at = std::time::Instant::now();
        let outcomes = self.run_batch_with_timeout(&kind, contexts, span).await;
        let took = started_at.elapsed().as_secs_f64();
        let settles = group.into_iter().zip(spans).zip(outcomes).map(
            |(((delivery, job, permit), span), outcome)| async move {
                metrics::histogram!("job_duration_seconds", "kind" => job.kind.clone())
                    .record(took);
                let settled = self.settle(&delivery, &job, outcome).instrument(span).await;
                self.let_go(&delivery, settled, permit);
            },
        );
        futures::future::join_all(settles).await;
    }

    /// Runs the handler in its own task: a panic or a timeout fails the jobs of this call
    /// only. One outcome per job, in order.
    async fn run_batch_with_timeout(
        &self,
        kind: &str,
        jobs: Vec<JobContext>,
        span: tracing::Span,
    ) -> Vec<RunOutcome> {
        let count = jobs.len();
        let all_failed = |message: String| {
            (0..count)
                .map(|_| RunOutcome::Failed(JobError::Retryable(anyhow::anyhow!("{message}"))))
                .collect()
        };
        let task = tokio::spawn(self.handlers.run_batch(kind, jobs).instrument(span));
        let abort = task.abort_handle();
        match tokio::time::timeout(self.job_timeout, task).await {
            Ok(Ok(results)) if results.len() == count => results
                .into_iter()
                .map(|result| match result {
                    Ok(()) => RunOutcome::Succeeded,
                    Err(error) => RunOutcome::Failed(error),
                })
                .collect(),
            Ok(Ok(results)) => all_failed(format!(
                "the batch handler returned {} results for {count} jobs",
                results.len()
            )),
            Ok(Err(join_error)) => {
                all_failed(format!("job panicked: {}", panic_message(join_error)))
            }
            Err(_) => {
                abort.abort();
                all_failed(format!("job timed out after {:?}", self.job_timeout))
            }
        }
    }

    /// The handler's view of a started job; the payload moves to it.
    fn context(&self, job: &mut StartedJob) -> JobContext {
        JobContext {
            db: self.db.clone(),
            job_id: job.id,
            attempt: job.attempt,
            payload: std::mem::take(&mut job.payload),
        }
    }

    /// Forgets deliveries this runner no longer holds (settled, or left to their lease).
    fn release(&self, deliveries: &[Delivery]) {
        let mut held = self.held.lock().expect("held lock poisoned");
        for delivery in deliveries {
            held.remove(&delivery.entry_id);
        }
    }

    /// Records the outcome in Postgres, then acknowledges or reschedules in Redis.
    async fn settle(
        &self,
        delivery: &Delivery,
        job: &StartedJob,
        outcome: RunOutcome,
    ) -> anyhow::Result<()> {
        let failure = match outcome {
            RunOutcome::Succeeded => {
                self.completer.complete(delivery.clone()).await?;
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                record_run(&job.kind, "succeeded");
                // From the job's creation (the event's relay) to its success.
                let latency = (chrono_now_ms() - job.created_at.timestamp_millis()).max(0);
                metrics::histogram!("job_end_to_end_seconds", "kind" => job.kind.clone())
                    .record(latency as f64 / 1000.0);
                tracing::debug!("job succeeded");
                return Ok(());
            }
            RunOutcome::Failed(failure) => failure,
        };
        let (error, asked_after) = match failure {
            JobError::Permanent(error) => {
                let message = format!("{error:#}");
                return self
                    .bury(
                        delivery,
                        job,
                        &message,
                        "job failed permanently; now a dead letter",
                    )
                    .await;
            }
            JobError::Deferred { after, reason } => {
                // Not an attempt: give it back, and run the job again later.
                {
                    let conn = self.db.conn().await?;
                    jobs::hand_back_job(&conn, job.id).await?;
                    jobs::schedule_retry(&conn, job.id, after.as_millis() as i64, &reason).await?;
                }
                self.queue.retry_later(delivery, after).await?;
                self.retry_scheduled.notify_one();
                record_run(&job.kind, "deferred");
                tracing::debug!(%reason, "job deferred");
                return Ok(());
            }
            JobError::RetryAfter { after, error } => (error, Some(after)),
            JobError::Retryable(error) => (error, None),
        };
        let message = format!("{error:#}");
        let policy = self.policies.for_kind(&job.kind);
        if job.attempt >= policy.max_attempts {
            return self
                .bury(
                    delivery,
                    job,
                    &message,
                    "job used up its attempts; now a dead letter",
                )
                .await;
        }
        // A Retry-After is honoured, but never beyond the policy's cap.
        let cap = Duration::from_millis(policy.max_delay_ms.max(0) as u64);
        let delay = match asked_after {
            Some(after) => policy.next_delay(job.attempt).max(after).min(cap),
            None => policy.next_delay(job.attempt),
        };
        {
            let conn = self.db.conn().await?;
            jobs::schedule_retry(&conn, job.id, delay.as_millis() as i64, &message).await?;
        }
        self.queue.retry_later(delivery, delay).await?;
        self.retry_scheduled.notify_one();
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        record_run(&job.kind, "retried");
        tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
        Ok(())
    }

    /// Ends a started job as a dead letter.
    async fn bury(
        &self,
        delivery: &Delivery,
        job: &StartedJob,
        message: &str,
        why: &str,
    ) -> anyhow::Result<()> {
        {
            let conn = self.db.conn().await?;
            jobs::bury_job(&conn, job.id, message).await?;
        }
        self.queue.finish(delivery).await?;
        self.stats.dead.fetch_add(1, Ordering::Relaxed);
        record_run(&job.kind, "dead");
        tracing::error!(error = %message, "{why}");
        Ok(())
    }

    /// A delivered job that could not start: finished already, scheduled for later, or out
    /// of attempts because its last attempt never reported back.
    async fn settle_unstartable(
        &self,
        delivery: &Delivery,
        fallback_max: i32,
    ) -> anyhow::Result<()> {
        let conn = self.db.conn().await?;
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        match jobs::job_state(&conn, delivery.job_id, fallback_max).await? {
            JobState::Finished => self.queue.finish(delivery).await?,
            JobState::Scheduled { in_ms } => {
                self.queue
                    .retry_later(delivery, Duration::from_millis(in_ms as u64))
                    .await?;
                self.retry_scheduled.notify_one();
            }
            JobState::Exhausted { attempts } => {
                let message = format!(
                    "attempt {attempts} never reported back (its worker died or stalled past the lease)"
                );
                jobs::bury_job(&conn, delivery.job_id, &message).await?;
                self.queue.finish(delivery).await?;
                self.stats.dead.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("dead_letters_total", "kind" => "unknown").increment(1);
                tracing::error!(job.id = delivery.job_id, error = %message, "job is now a dead letter");
            }
            JobState::Pending => {
                self.queue
                    .retry_later(delivery, Duration::from_millis(100))
                    .await?;
                self.retry_scheduled.notify_one();
            }
        }
        Ok(())
    }

    /// Renews the leases of held deliveries every third of a lease.
    async fn heartbeat(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held: Vec<String> = self
                .held
                .lock()
                .expect("held lock poisoned")
                .keys()
                .cloned()
                .collect();
            if let Err(error) = self.queue.heartbeat(&self.consumer, &held).await {
                tracing::warn!(error = %error, "heartbeat failed; leases may expire");
            }
        }
    }

    /// Every half lease, takes back deliveries whose lease expired and runs them here.
    async fn take_back(self, slots: Arc<Semaphore>, stop: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(self.lease / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            while running.try_join_next().is_some() {}
            // Wait for a free slot rather than skip the round when none is free: an idle
            // runner's reader holds every free slot while it blocks on the stream (up to
            // READ_BLOCK), so skipping left a dead worker's jobs stuck until new work
            // arrived. The semaphore is fair: this gets the next slot the reader lets go.
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore closed"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            match self
                .queue
                .take_back_expired(&self.consumer, self.lease, permits.len())
                .await
            {
                Ok(taken) => {
                    permits.truncate(taken.len());
                    for delivery in &taken {
                        self.stats.taken_back.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("lease_takebacks_total").increment(1);
                        tracing::warn!(
                            job.id = delivery.job_id,
                            "took back a job whose lease expired"
                        );
                    }
                    if !taken.is_empty() {
                        self.spawn_batch(&mut running, taken, permits);
                    }
                }
                Err(error) if is_missing_group(&error) => {}
                Err(error) => tracing::warn!(error = %error, "taking back expired leases failed"),
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Moves due retries into the stream: sleeps until the next is due (or the poll interval,
    /// for retries other workers scheduled), waking early when this runner schedules one.
    async fn promote(self, stop: CancellationToken) {
        loop {
            let wait = match self.queue.promote_due(500).await {
                Ok((_, Some(next))) => next.min(self.poll_interval),
                Ok((_, None)) => self.poll_interval,
                Err(error) => {
                    tracing::warn!(error = %error, "promoting due retries failed");
                    self.poll_interval
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.retry_scheduled.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Hands back the deliveries still held after the grace period.
    async fn hand_back_held(&self) {
        let held: Vec<Delivery> = self
            .held
            .lock()
            .expect("held lock poisoned")
            .drain()
            .map(|(_, d)| d)
            .collect();
        for delivery in held {
            let given_back = async {
                let conn = self.db.conn().await?;
                jobs::hand_back_job(&conn, delivery.job_id).await?;
                self.queue.hand_back(&delivery).await?;
                anyhow::Ok(())
            };
            match given_back.await {
                Ok(()) => tracing::info!(job.id = delivery.job_id, "handed a running job back"),
                Err(error) => tracing::warn!(
                    job.id = delivery.job_id,
                    error = format!("{error:#}"),
                    "could not hand a job back; it returns when its lease expires"
                ),
            }
        }
    }
}

/// A job's span: its logs carry the job and the request and actor that caused it.
fn job_span(job: &StartedJob) -> tracing::Span {
    tracing::info_span!("job", job.id = job.id, job.kind = %job.kind,
        job.attempt = job.attempt,
        request.id = job.payload.get("request_id").and_then(|v| v.as_str()).unwrap_or(""),
        actor.id = job.payload.get("actor_id").and_then(|v| v.as_str()).unwrap_or(""))
}

/// Counts a finished run; dead letters also get their own counter.
fn record_run(kind: &str, outcome: &'static str) {
    metrics::counter!("job_runs_total", "kind" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
    if outcome == "dead" {
        metrics::counter!("dead_letters_total", "kind" => kind.to_owned()).increment(1);
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into()),
        Err(error) => error.to_string(),
    }
}
